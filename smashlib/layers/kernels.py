"""Kernel registry: how a compressed layer runs, keyed by its weight format and the device it is on.

A compressed layer's buffers are the saved, portable truth; the form a kernel wants (PyTorch's int4 CPU
layout depends on the CPU's vector width) is derived from them on the machine that runs the model and
never saved. Kernels register for a weight format (``"packed_int"``: GPTQ's PackedLinear; ``"hqq"``:
HQQPackedLinear) and a device type (``"*"``: any); :func:`build_kernel` tries the registered kernels in
registration order (fastest first) and returns the first whose ``fits(layer)`` holds.

A kernel class has ``name``, ``fits(layer) -> bool`` (static/class method) and is built as
``Kernel(layer)``; calling it runs the layer: ``kernel(x) -> y``.

The int4 CPU conversion both formats share is :func:`int4_cpu_pack` / :func:`int4_cpu_matmul`:
PyTorch's ``_weight_int4pack_mm_for_cpu`` computes ``(q - 8) * scale + offset`` per group, so a
``(q - zero) * scale`` grid is exact with ``offset = (8 - zero) * scale``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: (weight format, device type) -> kernel classes, in the order they are tried.
_REGISTRY: dict[tuple[str, str], list[type]] = {}

#: Group sizes the int4 CPU kernel accepts, largest first.
INT4_CPU_GROUPS = (256, 128, 64, 32)
#: The int4 kernel's integers are offset by this: it computes (q - 8) * scale + offset.
INT4_CPU_OFFSET = 8
#: The int4 kernel packs output rows in tiles of this many.
INT4_CPU_ROW_TILE = 16


def register_kernel(weight_format: str, device: str = "*") -> Callable[[type], type]:
    """Class decorator: ``kernel`` runs layers of ``weight_format`` on ``device`` ("*": any device)."""

    def register(kernel: type) -> type:
        _REGISTRY.setdefault((weight_format, device), []).append(kernel)
        return kernel

    return register


def kernels_for(weight_format: str, device: str) -> list[type]:
    """The kernels registered for this format on this device, then those for any device."""
    return [*_REGISTRY.get((weight_format, device), ()), *_REGISTRY.get((weight_format, "*"), ())]


def build_kernel(layer: Any, weight_format: str, device: str) -> Any:
    """The first registered kernel for ``weight_format`` on ``device`` that fits ``layer``, built for it."""
    for kernel in kernels_for(weight_format, device):
        if kernel.fits(layer):
            return kernel(layer)
    raise LookupError(f"no kernel runs {weight_format} layers on {device}; register one with register_kernel")


# ====================================================================== the shared int4 CPU conversion
def int4_cpu_fits(in_features: int, out_features: int, group: int | None) -> bool:
    """Whether the int4 CPU kernel takes a weight of this shape with kernel groups of ``group``."""
    return group in INT4_CPU_GROUPS and in_features % group == 0 and out_features % INT4_CPU_ROW_TILE == 0


def int4_cpu_pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's (packed weight, scales_and_offsets) from integer ``codes`` [out, in] in 0..15 and
    per-kernel-group ``scales``/``zeros`` [out, groups] of a ``(q - zero) * scale`` grid (exact)."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    scales = scales.float()
    offsets = (INT4_CPU_OFFSET - zeros.float()) * scales
    scales_and_offsets = torch.stack([scales, offsets], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, scales_and_offsets


def int4_cpu_matmul(rows: torch.Tensor, packed: torch.Tensor, group: int, scales_and_offsets: torch.Tensor) -> torch.Tensor:
    """rows [n, in] (cast to bf16) @ W.T on the int4 CPU kernel; bf16 out. The kernel refuses strided rows,
    which callers get from transposed activations (Mamba's mixer, a reshape of a sliced batch)."""
    rows = rows.to(torch.bfloat16).contiguous()
    return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group, scales_and_offsets)
