"""Low-bit integer weights packed into bytes, with group scales and zero points: the storage of GPTQ.

A weight of ``bits`` (2, 3, 4 or 8) per value is stored as::

    qweight  uint8 [out, ceil(in * bits / 8)]   the integers q in [0, 2**bits - 1], packed along the input dim
    scales   bf16  [out, groups]                one scale per group of ``group_size`` input columns
    qzeros   uint8 [out, ceil(groups * bits/8)] one integer zero point per group, packed the same way
    perm     int32 [in]                         only for act-order: stored column j is input column perm[j]
    bias     float [out]                        when the layer has one

    weight[:, perm[j]] = scales[:, j // group_size] * (q[:, j] - zeros[:, j // group_size])

Everything is a plain tensor buffer, so the state dict goes to safetensors as it is and the size on
disk is the packed size. The form a kernel wants (e.g. PyTorch's int4 CPU layout, which depends on
the machine) is derived from these buffers on first use, never saved: see
:mod:`smashlib.layers.lowbit_kernels`. Scales are bfloat16 because the fastest CPU kernel takes them
in that type; the quantizer rounds them to bf16 *before* choosing the integers, so the kernel
computes with exactly the scales the solver used.

3-bit values are packed 8 to 3 bytes, so every supported width is stored at its real size.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from smashlib.layers.quantized_linear import QuantizedLinear
from smashlib.layers.tied_embedding import TiedEmbedding

SUPPORTED_BITS = (2, 3, 4, 8)
SCALE_DTYPE = torch.bfloat16
#: Rows converted at a time when packing, to bound the temporary int32 copy of a large matrix.
_ROW_CHUNK = 8192


def _chunk_shape(bits: int) -> tuple[int, int]:
    """(values, bytes) of the smallest run of values that fills whole bytes: 8 bits per lcm(bits, 8)."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    total = math.lcm(bits, 8)
    return total // bits, total // 8


def packed_length(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` take once packed (padded to a whole chunk)."""
    values, nbytes = _chunk_shape(bits)
    return math.ceil(count / values) * nbytes


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) along the last dimension into uint8 (little-endian within a chunk)."""
    values_per_chunk, bytes_per_chunk = _chunk_shape(bits)
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 1 << bits):
        raise ValueError(f"values must lie in [0, {(1 << bits) - 1}] to be packed in {bits} bits")
    if bits == 8:
        return values.to(torch.uint8).contiguous()
    *lead, count = values.shape
    rows = values.reshape(-1, count)
    padded = math.ceil(count / values_per_chunk) * values_per_chunk
    shifts = torch.arange(values_per_chunk, dtype=torch.int32, device=values.device) * bits
    byte_shifts = torch.arange(bytes_per_chunk, dtype=torch.int32, device=values.device) * 8
    out = []
    for part in rows.split(_ROW_CHUNK):
        part = nn.functional.pad(part.to(torch.int32), (0, padded - count))
        chunks = part.reshape(part.shape[0], -1, values_per_chunk)
        combined = (chunks << shifts).sum(dim=-1, dtype=torch.int32)  # at most 24 bits
        out.append(((combined.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(part.shape[0], -1))
    packed = torch.cat(out) if out else rows.new_zeros((0, packed_length(count, bits)), dtype=torch.uint8)
    return packed.reshape(*lead, packed.shape[-1])


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: uint8 values [..., count]."""
    values_per_chunk, bytes_per_chunk = _chunk_shape(bits)
    if bits == 8:
        return packed[..., :count]
    *lead, nbytes = packed.shape
    rows = packed.reshape(-1, nbytes)
    shifts = torch.arange(values_per_chunk, dtype=torch.int32, device=packed.device) * bits
    byte_shifts = torch.arange(bytes_per_chunk, dtype=torch.int32, device=packed.device) * 8
    mask = (1 << bits) - 1
    out = []
    for part in rows.split(_ROW_CHUNK):
        chunks = part.to(torch.int32).reshape(part.shape[0], -1, bytes_per_chunk)
        combined = (chunks << byte_shifts).sum(dim=-1, dtype=torch.int32)
        values = ((combined.unsqueeze(-1) >> shifts) & mask).to(torch.uint8)
        out.append(values.reshape(part.shape[0], -1)[:, :count])
    values = torch.cat(out) if out else rows.new_zeros((0, count))
    return values.reshape(*lead, count)


def group_count(in_features: int, group_size: int) -> int:
    """Groups per row: one for ``group_size == -1`` (a scale per output channel)."""
    return 1 if group_size == -1 else math.ceil(in_features / group_size)


class PackedLinear(QuantizedLinear):
    """A Linear whose weight is low-bit integers with group scales/zeros (see the module docstring).

    Only plain buffers are state; the kernel form is built lazily (or by :meth:`prepare_kernel`) and
    dropped whenever the buffers are replaced or moved, so loading a state dict is always exact.
    """

    #: Which kernel 8-bit decode calls run: "auto" (smashlib's VNNI kernel where it runs) or "weight_only"
    #: (PyTorch's). Set from gptq's ``decode_kernel`` (saved in the config).
    decode_kernel: str = "auto"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: bool,
        act_order: bool = False,
        bias_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
        super().__init__(in_features, out_features)
        self.bits, self.group_size, self.act_order = bits, group_size, act_order
        groups = group_count(in_features, group_size)
        self.register_buffer("qweight", torch.zeros(out_features, packed_length(in_features, bits), dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=SCALE_DTYPE, device=device))
        self.register_buffer("qzeros", torch.zeros(out_features, packed_length(groups, bits), dtype=torch.uint8, device=device))
        self.register_buffer("perm", torch.arange(in_features, dtype=torch.int32, device=device) if act_order else None)
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_integers(
        cls,
        q: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bits: int,
        group_size: int,
        perm: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> PackedLinear:
        """A layer from unpacked integers ``q`` [out, in] (stored column order), ``scales`` and ``zeros``
        [out, groups] (zeros as integers), ``perm`` (act-order) and ``bias``."""
        out_features, in_features = q.shape
        layer = cls(
            in_features, out_features, bits, group_size, bias is not None, act_order=perm is not None,
            bias_dtype=bias.dtype if bias is not None else torch.float32, device=q.device,
        )
        layer.qweight = pack_bits(q, bits)
        layer.scales = scales.to(SCALE_DTYPE).contiguous()
        layer.qzeros = pack_bits(zeros, bits)
        if perm is not None:
            layer.perm = perm.to(torch.int32).contiguous()
        if bias is not None:
            layer.bias = bias.detach().clone()
        return layer

    # ------------------------------------------------------------------ views of the stored weight
    def integers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [out, in], zeros [out, groups]) unpacked, in stored column order."""
        groups = self.scales.shape[1]
        return unpack_bits(self.qweight, self.bits, self.in_features), unpack_bits(self.qzeros, self.bits, groups)

    @property
    def stored_group_size(self) -> int:
        """The columns of one stored group (the whole row when ``group_size`` is -1)."""
        return self.in_features if self.group_size == -1 else self.group_size

    def column_groups(self) -> torch.Tensor:
        """The group of each stored column."""
        return torch.arange(self.in_features, device=self.qweight.device) // self.stored_group_size

    def dequantize_stored(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] in stored column order (the act-order permutation not undone)."""
        q, zeros = self.integers()
        groups = self.column_groups()
        scales = self.scales.to(dtype)[:, groups]
        return scales * (q.to(dtype) - zeros.to(dtype)[:, groups])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] as nn.Linear would hold it."""
        weight = self.dequantize_stored(dtype)
        if self.perm is None:
            return weight
        original = torch.empty_like(weight)
        original[:, self.perm.long()] = weight
        return original

    # ------------------------------------------------------------------ execution
    def build_kernel(self):
        """The fastest registered kernel form for this layer on its device (smashlib.layers.lowbit_kernels)."""
        from smashlib.layers.lowbit_kernels import build_kernel

        return build_kernel(self)

    def prepare_kernel(self) -> None:
        """Build the kernel form now (after quantizing or loading), so the first call is not slower."""
        self.invalidate_kernel()
        self.kernel  # noqa: B018  (builds and caches it)

    @property
    def kernel_name(self) -> str:
        return self.kernel.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, act_order={self.act_order}, bias={self.bias is not None}"
        )


class PackedEmbedding(TiedEmbedding):
    """An embedding that reads its table from a :class:`PackedLinear` output head it is tied to.

    Once the head is quantized, the embedding looks up and dequantizes the head's rows instead of
    keeping its own copy, so the table is stored once, packed. The head is held as a plain reference,
    not a submodule, so the state dict holds its tensors once.
    """

    def __init__(self, head: PackedLinear, padding_idx: int | None = None, dtype: torch.dtype = torch.float32,
                 scale: float | None = None) -> None:
        super().__init__(head.out_features, head.in_features, dtype, padding_idx, scale)
        object.__setattr__(self, "_head", head)

    @property
    def head(self) -> PackedLinear:
        return self._head

    @property
    def dtype(self) -> torch.dtype:  # the name this class used before it shared TiedEmbedding's
        return self.output_dtype

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        head = self._head
        flat = ids.reshape(-1)
        q = unpack_bits(head.qweight.index_select(0, flat), head.bits, head.in_features)
        zeros = unpack_bits(head.qzeros.index_select(0, flat), head.bits, head.scales.shape[1])
        groups = head.column_groups()
        rows = head.scales.index_select(0, flat).float()[:, groups] * (q.float() - zeros.float()[:, groups])
        if head.perm is not None:
            original = torch.empty_like(rows)
            original[:, head.perm.long()] = rows
            rows = original
        return rows.reshape(*ids.shape, head.in_features)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, tied to a packed {self._head.bits}-bit head{self.describe_scale()}"
