"""How a :class:`~smashlib.layers.packed_int.PackedLinear` runs: kernel forms derived from its buffers.

The packed buffers are the saved, portable truth; each kernel form below is rebuilt from them on the
machine that runs the model (PyTorch's int4 CPU layout depends on the CPU). The first form that fits
the layer and its device is used, in this order, which is the order of measured speed on CPU:

``int4_vnni_cpu`` 2, 3 and 4 bits on smashlib's kernel (:mod:`smashlib.layers.int8_vnni_kernel`, AVX512-VNNI
                  or AVX2) where it builds and the layer's ``decode_kernel`` is ``"auto"``: decode calls (up to
                  :data:`GEMM_ROWS` rows) multiply ``q - zero`` by int16 activation blocks (the same product to
                  a relative 2e-5); longer calls rebuild the float32 weight with the kernel's dequantize op and
                  multiply it with the GEMM of :func:`~smashlib.layers.cpu_features.gemm_dtype`. One copy of
                  the 4-bit weight is kept (the kernel's layout), none of PyTorch's. Measured on an AVX2 EPYC
                  (2 threads, 210 products of SmolLM2's blocks, weights larger than the caches): 5.6 ms
                  against 10.5 ms for ``int4pack_cpu``, which is not at the memory bandwidth without AVX-512;
                  a 128-token product of a 1536 x 576 layer: 1.58 ms (0.11 ms of it the dequantize op)
                  against 2.93 ms (fp32: 1.39 ms).
``int4pack_cpu``  ``aten._weight_int4pack_mm_for_cpu`` with **bf16 activations**, for 2, 3 and 4 bits
                  (their integers fit the kernel's 0..15 grid exactly). Weight-only: activations are
                  not quantized, so GPTQ's quality is kept. Measured here (AVX512-BF16 EPYC, 1 thread,
                  batch 1): 56 us for a 1536x576 mat-vec against 85 us in fp32, and 1.7 ms against
                  20 ms for the 49152x576 output head. With fp32 activations the same kernel is
                  20-40x slower (the "14x slower than fp32" of a first probe), hence the bf16 cast.
``int8pack_cpu``  8 bits, int8 weight with one scale per row. 8-bit grids are symmetric (zero point
                  128), so with one group per row (group_size -1) q - 128 is the int8 weight exactly;
                  with smaller groups the dequantized weight is re-rounded to one int8 grid per row (an
                  extra error below half a step of that grid). The kernel is chosen by the number of
                  rows (tokens) of each call: up to :data:`GEMM_ROWS` rows (decode) it is
                  ``aten._weight_int8pack_mm``, a matrix-vector kernel reading one byte per weight;
                  above (prefill) that kernel is slower than fp32 MKL (measured 2.1 ms against 0.68 ms
                  for 128 x 576 @ 576 x 1536), so the int8 matrix is converted for the call (integers up
                  to 127 are exact in bf16, the row scale is applied to the output) and multiplied by
                  the GEMM of :func:`~smashlib.layers.cpu_features.gemm_dtype`: bf16 on CPUs with bf16
                  units (the speed of a bf16 model), fp32 elsewhere (where bf16 GEMMs are emulated and
                  measured 6x slower than fp32: 14.7 ms against 2.4 ms for that product, conversion
                  included, on an AVX2 EPYC), with no second copy kept.
``int8_vnni_cpu`` 8 bits as ``int8pack_cpu``, but decode calls (up to :data:`GEMM_ROWS` rows) run smashlib's
                  AVX512-VNNI (or AVX2) kernel (:mod:`smashlib.layers.int8_vnni_kernel`: activations as int16 per
                  block of 32, the same product to a relative 2e-5), twice the weight-only kernel's
                  speed at batch 1. For layers whose ``decode_kernel`` is ``"auto"`` (gptq's
                  ``gptq_decode_kernel``, the default) on CPUs where the kernel builds; elsewhere those
                  layers run ``int8pack_cpu``.
``dequantized``   anything else (other devices, shapes the kernels refuse): the weight is dequantized
                  once into the activations' dtype and run with ``F.linear``; exact, no speed-up.

fbgemm's dynamic int8 kernel (``quantized::linear_dynamic``) is faster still, but it quantizes the
activations per tensor, and SmolLM2's outlier channels then cost far more than GPTQ gains (see
docs/torch_dynamic.md), so it is not used here.
"""
from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, ClassVar

import torch
from torch.nn import functional as F

from smashlib.layers.cpu_features import gemm_dtype
from smashlib.layers.int8_float_gemm import int8_float32_gemm
from smashlib.layers.int8_linear import quantize_per_channel_int8
from smashlib.layers.kernels import (
    INT4_CPU_GROUPS,
    INT4_CPU_OFFSET,
    int4_cpu_fits,
    int4_cpu_matmul,
    int4_cpu_pack,
    register_kernel,
)
from smashlib.layers.kernels import build_kernel as _build_from_registry

if TYPE_CHECKING:  # type hints only: packed_int imports this module lazily, at kernel-build time
    from smashlib.layers.packed_int import PackedLinear

#: The kernels' parameters, under the names this module exported before they moved to smashlib.layers.kernels.
INT4_KERNEL_GROUPS = INT4_CPU_GROUPS
INT4_KERNEL_OFFSET = INT4_CPU_OFFSET
#: The weight format of PackedLinear in the kernel registry.
PACKED_INT = "packed_int"


#: Calls with more rows (tokens) than this run 8-bit weights through a bf16 GEMM instead of the
#: matrix-vector kernel. Measured here (2 threads, 1536 x 576): the int8 kernel costs about 0.03 ms a
#: row, converting the weight about 0.2 ms once, so the two cross near 8 rows.
GEMM_ROWS = 8

#: A PackedLinear's ``decode_kernel``: its decode calls on smashlib's kernels where they run (8 bits, and 2-4
#: bits), always on PyTorch's (weight-only int8, int4), or smashlib's for 8 bits only (what folders saved
#: before the 4-bit kernel computed: their 2-4-bit layers keep PyTorch's int4 kernel).
DECODE_AUTO = "auto"
DECODE_WEIGHT_ONLY = "weight_only"
DECODE_INT8_ONLY = "int8_only"
DECODE_KERNELS = (DECODE_AUTO, DECODE_WEIGHT_ONLY, DECODE_INT8_ONLY)


def _smashlib_kernel_runs(layer: PackedLinear, otherwise: str, whole_groups: bool = False) -> bool:
    """Whether smashlib's kernels (smashlib.layers.int8_vnni_kernel, built on the first call) run ``layer``: its
    input size (and with ``whole_groups`` its stored groups, whose scales the 4-bit kernel reads per block) in
    whole blocks of 32, and the library built here; if it cannot be built, ``otherwise`` and the reason are
    logged once."""
    from smashlib.layers import int8_vnni_kernel

    sizes = (layer.in_features, layer.stored_group_size) if whole_groups else (layer.in_features,)
    if any(size % int8_vnni_kernel.BLOCK for size in sizes):
        return False
    reason = int8_vnni_kernel.unavailable_reason()
    if reason is not None:
        _note_once(f"{otherwise}: smashlib's VNNI kernel {reason}.")
    return reason is None


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype)


class Int4PackCPU:
    """2/3/4-bit weights on PyTorch's int4 CPU kernel (bf16 activations, fp32 accumulation)."""

    name: ClassVar[str] = "int4pack_cpu"

    @staticmethod
    def kernel_group(layer: PackedLinear) -> int | None:
        """The largest group size the kernel takes whose groups each lie in one stored group."""
        for size in INT4_KERNEL_GROUPS:
            if layer.in_features % size == 0 and layer.stored_group_size % size == 0:
                return size
        return None

    @classmethod
    def fits(cls, layer: PackedLinear) -> bool:
        return (
            layer.qweight.device.type == "cpu"
            and layer.bits <= 4
            and int4_cpu_fits(layer.in_features, layer.out_features, cls.kernel_group(layer))
        )

    def __init__(self, layer: PackedLinear) -> None:
        self.group = self.kernel_group(layer)
        q, zeros = layer.integers()
        # kernel group c covers stored columns [c * group, (c + 1) * group): all in the stored group of its first
        which = layer.column_groups()[:: self.group]
        self.weight, self.scales_and_zeros = int4_cpu_pack(q, layer.scales[:, which], zeros[:, which])
        self.perm = layer.perm.long() if layer.perm is not None else None
        self.bias = layer.bias
        self.out_features = layer.out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.perm is not None:
            rows = rows.index_select(1, self.perm)
        y = int4_cpu_matmul(rows, self.weight, self.group, self.scales_and_zeros)
        return _add_bias(y.to(x.dtype), self.bias).reshape(*x.shape[:-1], self.out_features)


@register_kernel(PACKED_INT, "cpu")
class Int4VnniCPU:
    """2/3/4-bit weights on smashlib's kernel (int16 activation blocks, AVX512-VNNI or AVX2) for decode calls,
    and for prefill a GEMM on the weight dequantized for the call (in :func:`gemm_dtype`), one copy kept."""

    name: ClassVar[str] = "int4_vnni_cpu"

    @staticmethod
    def fits(layer: PackedLinear) -> bool:
        if not (layer.qweight.device.type == "cpu" and layer.bits <= 4
                and getattr(layer, "decode_kernel", DECODE_AUTO) == DECODE_AUTO):
            return False
        return _smashlib_kernel_runs(layer, "2-4-bit layers run PyTorch's int4 kernel", whole_groups=True)

    def __init__(self, layer: PackedLinear) -> None:
        from smashlib.layers.int8_vnni_kernel import BLOCK, int4_kernel_layout

        q, zeros = layer.integers()
        which = layer.column_groups()[::BLOCK]  # the stored group of each block of 32 columns
        self.packed, self.scales, self.zeros = int4_kernel_layout(q, layer.scales[:, which], zeros[:, which])
        self.perm = layer.perm.long() if layer.perm is not None else None
        self.bias = layer.bias
        self.out_features = layer.out_features
        self.gemm_dtype = gemm_dtype()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.perm is not None:
            rows = rows.index_select(1, self.perm)
        if rows.shape[0] > GEMM_ROWS and self.gemm_dtype == torch.float32:
            y = torch.ops.smashlib.int4_gemm(rows, self.packed, self.scales, self.zeros)
        elif rows.shape[0] > GEMM_ROWS:
            weight = torch.ops.smashlib.int4_dequantize(self.packed, self.scales, self.zeros).to(self.gemm_dtype)
            y = F.linear(rows.to(self.gemm_dtype), weight)
        else:
            y = torch.ops.smashlib.int4_matvec(rows, self.packed, self.scales, self.zeros)
        return _add_bias(y.to(x.dtype), self.bias).reshape(*x.shape[:-1], self.out_features)


# registered after smashlib's form, so 2-4-bit layers get that first where it runs
register_kernel(PACKED_INT, "cpu")(Int4PackCPU)


class Int8PackCPU:
    """8-bit weights on PyTorch's int8 weight-only CPU kernel (bf16 activations, one scale per row)."""

    name: ClassVar[str] = "int8pack_cpu"

    @staticmethod
    def fits(layer: PackedLinear) -> bool:
        return layer.qweight.device.type == "cpu" and layer.bits == 8

    def __init__(self, layer: PackedLinear) -> None:
        q, zeros = layer.integers()
        if layer.group_size == -1 and bool((zeros == 128).all()):
            weight = (q.to(torch.int16) - 128).to(torch.int8)
            if layer.perm is not None:  # one group per row: the columns can simply go back in place
                weight = torch.empty_like(weight).index_copy_(1, layer.perm.long(), weight)
            self.weight, self.scales = weight, layer.scales[:, 0].contiguous()
        else:
            self.weight, scales = quantize_per_channel_int8(layer.dequantize(torch.float32))
            self.scales = scales.to(torch.bfloat16)
        self.bias = layer.bias
        self.out_features = layer.out_features
        self.gemm_dtype = gemm_dtype()
        self.gemm_scales = self.scales.to(self.gemm_dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        y = self.gemm(rows) if rows.shape[0] > GEMM_ROWS else self.matvec(rows)
        return _add_bias(y.to(x.dtype), self.bias).reshape(*x.shape[:-1], self.out_features)

    def gemm(self, rows: torch.Tensor) -> torch.Tensor:
        """Prefill: matrix-matrix work, on the int8 matrix converted to the GEMM's dtype for this call (in fp32,
        as one op that torch.compile does not trace into: smashlib.layers.int8_float_gemm)."""
        if self.gemm_dtype == torch.float32:
            return int8_float32_gemm(rows, self.weight, self.gemm_scales)
        return F.linear(rows.to(self.gemm_dtype), self.weight.to(self.gemm_dtype)) * self.gemm_scales

    def matvec(self, rows: torch.Tensor) -> torch.Tensor:
        """Decode: PyTorch's weight-only matrix-vector kernel (bf16 activations)."""
        return torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight, self.scales)


@register_kernel(PACKED_INT, "cpu")
class Int8VnniCPU(Int8PackCPU):
    """8-bit weights whose decode calls run smashlib's kernel (int16 activation blocks, AVX512-VNNI or AVX2)."""

    name: ClassVar[str] = "int8_vnni_cpu"

    @staticmethod
    def fits(layer: PackedLinear) -> bool:
        if not (Int8PackCPU.fits(layer) and getattr(layer, "decode_kernel", DECODE_AUTO) in (DECODE_AUTO, DECODE_INT8_ONLY)):
            return False
        return _smashlib_kernel_runs(layer, "8-bit layers decode with PyTorch's weight-only kernel")

    def __init__(self, layer: PackedLinear) -> None:
        super().__init__(layer)
        self.float_scales = self.scales.float()  # what the decode kernel reads; prefill uses gemm_scales

    def matvec(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.smashlib.int8_vnni_matvec(rows, self.weight, self.float_scales)

    def gemm(self, rows: torch.Tensor) -> torch.Tensor:
        """Prefill in fp32: the library's GEMM, dequantizing with the scales folded in (int8_vnni_matvec.cpp)."""
        if self.gemm_dtype == torch.float32:
            return torch.ops.smashlib.int8_gemm(rows, self.weight, self.float_scales)
        return super().gemm(rows)


# registered after the VNNI form (which specializes it), so 8-bit layers get that first where it runs
register_kernel(PACKED_INT, "cpu")(Int8PackCPU)


@functools.cache
def _note_once(message: str) -> None:
    logging.getLogger(__name__).info(message)


@register_kernel(PACKED_INT, "*")
class Dequantized:
    """Any device, any shape: the weight dequantized once, run by F.linear in the activations' dtype."""

    name: ClassVar[str] = "dequantized"

    @staticmethod
    def fits(layer: PackedLinear) -> bool:
        return True

    def __init__(self, layer: PackedLinear) -> None:
        self.weight = layer.dequantize(torch.float32)
        self.bias = layer.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != x.dtype:
            self.weight = self.weight.to(x.dtype)
        return F.linear(x, self.weight, None if self.bias is None else self.bias.to(x.dtype))


#: Tried in order; the first that fits the layer runs it (as registered above).
KERNELS: tuple[type, ...] = (Int4VnniCPU, Int4PackCPU, Int8VnniCPU, Int8PackCPU, Dequantized)


def build_kernel(layer: PackedLinear):
    """The fastest kernel form that fits ``layer`` on its current device."""
    return _build_from_registry(layer, PACKED_INT, layer.qweight.device.type)
