"""Prefill of 8-bit layers on CPUs without bf16 units: an fp32 GEMM on the int8 matrix, as one opaque op.

Without bf16 units (smashlib.layers.cpu_features) the long calls of an 8-bit layer convert its int8 matrix to
fp32 for the call and multiply in fp32. Eager, the conversion costs 0.33 ms for a 1536 x 576 layer (a 128-token
product then takes 1.80 ms against 1.47 ms on an fp32 weight, on an AVX2 EPYC); traced by torch.compile,
Inductor generates the conversion itself and the same call took 2.23 ms. Registered as a custom op, the
compiled graph calls the eager code instead (and keeps one graph: it has a fake implementation). Where
smashlib's kernel library runs, 8-bit layers use its ``int8_gemm`` instead (smashlib.layers.int8_vnni_kernel),
which folds the scales into the conversion; this op is for the layers on PyTorch's weight-only kernel.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


@torch.library.custom_op("smashlib::int8_float32_gemm", mutates_args=())
def int8_float32_gemm(rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``rows`` [M, K] times the int8 ``weight`` [N, K] with float32 ``scales`` [N] per row: float32 [M, N]."""
    return F.linear(rows.to(torch.float32), weight.to(torch.float32)) * scales


@int8_float32_gemm.register_fake
def _shape(rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return rows.new_empty((rows.shape[0], weight.shape[0]), dtype=torch.float32)
