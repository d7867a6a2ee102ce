"""HQQLinear replacement for CPU: Half-Quadratic-Quantized weights stored bit-packed, run on a real kernel.

The quantization itself (the half-quadratic solver that fits zero points, and the bit packing) is the
``hqq`` package's ``Quantizer``. Its own ``hqq.core.quantize.HQQLinear`` is not used as the module: it
keeps its tensors outside ``state_dict()`` (``model.state_dict()`` would lose them), makes ``.to()`` a
no-op and assumes CUDA. This module keeps the packed weight, scales and zeros as ordinary buffers, so
a state dict is plain tensors (bit-packed uint8/int32 on disk) and a meta-device skeleton can be
built from shapes alone.

How it computes (``backend``), measured on this 2-core AVX512 CPU (see docs/hqq.md):

* ``int4_tinygemm`` (4-bit, axis 1): PyTorch's int4 CPU kernel ``_weight_int4pack_mm_for_cpu`` with
  bf16 activations. HQQ's ``(q - zero) * scale`` is exactly the kernel's ``(q - 8) * scale + offset``
  with ``offset = (8 - zero) * scale``, so no precision is lost in the conversion. The kernel's packed
  layout depends on the CPU's vector width, so it is built in memory (``pack_for_kernel``), never saved.
* ``dequantize``: unpack and rebuild the float weight at every call, then a float matmul (hqq's own
  "pytorch" backend). Works for every bit width and axis, on any device, but it is slower than the
  fp32 model: every call pays the unpacking on top of the same matmul.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from smashlib.layers.kernels import INT4_CPU_GROUPS, int4_cpu_fits, int4_cpu_matmul, int4_cpu_pack
from smashlib.layers.quantized_linear import QuantizedLinear

#: Group sizes the int4 CPU kernel accepts.
TINYGEMM_GROUP_SIZES = tuple(sorted(INT4_CPU_GROUPS))


def _hqq_quantizer():
    from hqq.core.quantize import Quantizer  # lazy: hqq is an optional extra

    return Quantizer


def packed_shape(nbits: int, rows: int, columns: int) -> tuple[int, int]:
    """Shape of hqq's bit-packed tensor for a ``rows x columns`` grid of codes (hqq packs along rows)."""
    if nbits == 8:
        return rows, columns
    if nbits == 3:  # ten 3-bit codes per int32, the last word padded
        return math.ceil(rows / 10), columns
    return rows * nbits // 8, columns


def layer_supported(in_features: int, out_features: int, nbits: int, group_size: int, axis: int) -> bool:
    """Whether hqq can pack a weight of this size: whole groups, and (2 and 4 bits) whole bytes of codes."""
    numel = in_features * out_features
    if numel % group_size or (axis == 1 and in_features % group_size):
        return False
    rows = numel // group_size if axis == 1 else group_size
    return nbits in (3, 8) or rows % (8 // nbits) == 0


def group_meta_dtype(nbits: int) -> torch.dtype:
    """float16 scales and zeros (as hqq keeps them) cost 0.5 bit per weight at group size 64; 8-bit zero
    points span 0..255 where float16 steps by 1/8 of a code, so they stay float32."""
    return torch.float32 if nbits == 8 else torch.float16


def tinygemm_supported(nbits: int, axis: int, group_size: int) -> bool:
    """Whether the int4 CPU kernel can run these settings (layer_supported already ensures whole groups)."""
    return nbits == 4 and axis == 1 and group_size in TINYGEMM_GROUP_SIZES


def tinygemm_layer_supported(in_features: int, out_features: int, group_size: int) -> bool:
    """Whether the int4 CPU kernel takes a layer of this shape (whole groups per row, rows in tiles of 16)."""
    return int4_cpu_fits(in_features, out_features, group_size)


def dequantize_codes(
    W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, nbits: int, group_size: int, axis: int,
    out_features: int, in_features: int, dtype: torch.dtype,
) -> torch.Tensor:
    """hqq's dequantization, ``(unpack(W_q) - zero) * scale``, as a (out_features, in_features) weight."""
    Quantizer = _hqq_quantizer()
    packing = Quantizer.bit_to_packing[nbits]
    meta = {
        "nbits": nbits, "group_size": group_size, "axis": axis, "shape": torch.Size((out_features, in_features)),
        "scale": scale.to(dtype), "zero": zero.to(dtype), "packing": packing, "view_as_float": False,
        "unpack_view_dtype": Quantizer.unpack_view_dtype[packing], "compute_dtype": dtype,
    }
    return Quantizer.dequantize(W_q, meta)


@torch.library.custom_op("smashlib::hqq_int4_linear", mutates_args=())
def hqq_int4_linear(
    x: torch.Tensor, packed: torch.Tensor, scales_and_offsets: torch.Tensor, group_size: int,
    W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
) -> torch.Tensor:
    """x @ W.T on the int4 CPU kernel (bf16 in and out). An opaque op for torch.compile, with a backward
    (through the dequantized weight) so that gradients reach layers before it (adapters, recovery)."""
    flat = x.reshape(-1, x.shape[-1])
    out = int4_cpu_matmul(flat, packed, group_size, scales_and_offsets)
    return out.reshape(*x.shape[:-1], out.shape[-1])


@hqq_int4_linear.register_fake
def _(x, packed, scales_and_offsets, group_size, W_q, scale, zero):
    return x.new_empty((*x.shape[:-1], scales_and_offsets.shape[1]))


def _setup_backward(ctx, inputs, output):
    ctx.group_size = inputs[3]
    ctx.save_for_backward(inputs[4], inputs[5], inputs[6])
    ctx.in_features = inputs[0].shape[-1]


def _backward(ctx, grad):
    W_q, scale, zero = ctx.saved_tensors
    weight = dequantize_codes(W_q, scale, zero, 4, ctx.group_size, 1, grad.shape[-1], ctx.in_features, grad.dtype)
    return grad @ weight, None, None, None, None, None, None


hqq_int4_linear.register_autograd(_backward, setup_context=_setup_backward)


class HQQPackedLinear(QuantizedLinear):
    """Drop-in replacement of nn.Linear whose weight is HQQ-quantized to 2, 3, 4 or 8 bits."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        nbits: int,
        group_size: int,
        axis: int = 1,
        backend: str = "dequantize",
        device=None,
    ) -> None:
        if (in_features * out_features) % group_size:
            raise ValueError(f"a {out_features}x{in_features} weight does not split into groups of {group_size}")
        super().__init__(in_features, out_features)
        self.nbits, self.group_size, self.axis, self.backend = nbits, group_size, axis, backend
        groups = in_features * out_features // group_size
        # hqq groups rows of length group_size (axis 1) or columns of height group_size (axis 0)
        rows, columns = (groups, group_size) if axis == 1 else (group_size, groups)
        code_dtype = torch.int32 if nbits == 3 else torch.uint8
        scale_shape = (groups, 1) if axis == 1 else (1, groups)
        meta_dtype = group_meta_dtype(nbits)
        self.register_buffer("W_q", torch.zeros(packed_shape(nbits, rows, columns), dtype=code_dtype, device=device))
        self.register_buffer("scale", torch.ones(scale_shape, dtype=meta_dtype, device=device))
        self.register_buffer("zero", torch.zeros(scale_shape, dtype=meta_dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, nbits: int, group_size: int, axis: int = 1,
        backend: str = "dequantize",
    ) -> HQQPackedLinear:
        """Quantize ``weight`` (out_features x in_features) with hqq's half-quadratic solver (no data)."""
        Quantizer = _hqq_quantizer()
        weight = weight.detach()
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias is not None, nbits, group_size, axis, backend, device=weight.device)
        codes, meta = Quantizer.quantize(
            weight.float(), nbits=nbits, channel_wise=True, group_size=group_size, optimize=True,
            round_zero=nbits == 4, axis=axis, bitpack=True, compute_dtype=torch.float32, device=weight.device,
        )
        # hqq's solver runs under inference_mode; clone so the buffers are ordinary tensors
        layer.W_q = codes.clone()
        layer.scale = meta["scale"].to(layer.scale.dtype).clone()
        layer.zero = meta["zero"].to(layer.zero.dtype).clone()
        if bias is not None:
            layer.bias = bias.detach().float().clone()
        if backend == "int4_tinygemm":
            layer.pack_for_kernel()
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the codes stand for (hqq's dequantization)."""
        return dequantize_codes(self.W_q, self.scale, self.zero, self.nbits, self.group_size, self.axis,
                                self.out_features, self.in_features, dtype)

    def codes(self) -> torch.Tensor:
        """The unpacked integer codes, shaped like the weight (axis 1 only)."""
        Quantizer = _hqq_quantizer()
        unpacked = Quantizer.unpack[Quantizer.bit_to_packing[self.nbits]](self.W_q, dtype=torch.uint8)
        groups = self.in_features * self.out_features // self.group_size
        return unpacked[:groups].reshape(self.out_features, self.in_features)

    @property
    def bits(self) -> int:
        """Bits per weight, under the name the other quantized layers use (hqq's own is ``nbits``)."""
        return self.nbits

    def build_kernel(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The int4 CPU kernel's weight and scale/offset tensors from the saved codes; None (and the
        ``dequantize`` backend) where the kernel does not take the layer."""
        if not tinygemm_supported(self.nbits, self.axis, self.group_size) or not tinygemm_layer_supported(
            self.in_features, self.out_features, self.group_size
        ):
            self.backend = "dequantize"  # e.g. a classifier head with 2 outputs: the kernel wants rows in 16s
            return None
        return int4_cpu_pack(
            self.codes(), self.scale.reshape(self.out_features, -1), self.zero.reshape(self.out_features, -1)
        )

    def pack_for_kernel(self) -> None:
        """Build the kernel form now (after quantizing or loading)."""
        self.invalidate_kernel()
        self.kernel  # noqa: B018  (builds and caches it)

    # ------------------------------------------------------------------ running
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "int4_tinygemm" and x.device.type == "cpu":
            kernel = self.kernel  # None, with the backend set to "dequantize", where the kernel does not apply
            if kernel is not None:
                packed, scales_and_offsets = kernel
                out = hqq_int4_linear(x.to(torch.bfloat16), packed, scales_and_offsets, self.group_size,
                                      self.W_q, self.scale, self.zero).to(x.dtype)
                return out if self.bias is None else out + self.bias.to(x.dtype)
        weight = self.dequantize(x.dtype)
        return nn.functional.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{self.nbits}-bit, group_size={self.group_size}, axis={self.axis}, backend={self.backend}"
        )
