"""The GPTQ solver (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), and round-to-nearest on the same grid for comparison.

GPTQ quantizes a layer's weight W [out, in] one input column at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
reconstruction loss ||W X - Q X||^2, H = 2 X X^T, where X are the layer's inputs on calibration data.
Rows are independent, so layers that read the same input (q/k/v, gate/up) are solved as one matrix.

Following the paper's algorithm: damp H by ``damp_percent`` of its mean diagonal, take the upper
Cholesky factor of H^-1 (numerically stable, computed once), process columns in blocks of 128 with the
error of a block applied to the rest of the matrix in one matmul ("lazy batch updates"), and optionally
order columns by decreasing diag(H) ("act-order", which the paper found to help most at low bits).

The grid is asymmetric min-max per group of ``group_size`` columns (in processing order, as in the
reference code), with integer zero points and scales rounded to bf16 before use, so that the stored
scales are exactly those the solver quantized with.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from smashlib.gptq.block_grids import block_grid_parameters
from smashlib.layers.packed_int import SCALE_DTYPE

BLOCK_SIZE = 128


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the solver on one thread. Its column loop is hundreds of small ops (a few hundred thousand
    elements each); splitting each across threads gains nothing, and on a busy machine every op then
    waits for a descheduled thread: measured 20x slower with 2 threads than with 1 on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class QuantizedWeight:
    """Integers in stored column order, their group scales and zero points, and the act-order permutation."""

    q: torch.Tensor  # uint8 [out, in]
    scales: torch.Tensor  # bf16 [out, groups]
    zeros: torch.Tensor  # uint8 [out, groups]
    perm: torch.Tensor | None  # int64 [in]: stored column j is input column perm[j]

    def dequantize(self, group_size: int) -> torch.Tensor:
        """The weight [out, in] in the original column order, in fp32."""
        columns = self.q.shape[1]
        groups = torch.arange(columns, device=self.q.device) // (columns if group_size == -1 else group_size)
        weight = self.scales.float()[:, groups] * (self.q.float() - self.zeros.float()[:, groups])
        if self.perm is None:
            return weight
        original = torch.empty_like(weight)
        original[:, self.perm] = weight
        return original

    def rows(self, start: int, stop: int) -> QuantizedWeight:
        """The rows [start, stop): one layer's share of a matrix solved for several layers at once."""
        return QuantizedWeight(self.q[start:stop], self.scales[start:stop], self.zeros[start:stop], self.perm)


def symmetric_grid(bits: int) -> bool:
    """8-bit grids are symmetric (zero point fixed at 128): then q - 128 is exactly an int8, so one group
    per row runs on the int8 kernel with no re-rounding. Lower widths use asymmetric min-max grids,
    which waste no level on the side of zero a group does not reach."""
    return bits == 8


def grid_parameters(weight: torch.Tensor, bits: int, kind: str = "minmax") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row for the grid over ``weight`` [out, columns] (see :func:`symmetric_grid`);
    ``kind`` other than "minmax" is one of llama.cpp's block grids (smashlib.gptq.block_grids).

    Min-max, with the range always including 0 (as in the reference implementation); scales are
    rounded to the storage dtype here, so quantizing with them is exactly what dequantizing from
    storage gives back. (The reference code's optional search for a clipped range was tried on
    SmolLM2: 1.8% better perplexity with GPTQ, 4% worse with round-to-nearest; not worth its time.)
    """
    if kind != "minmax":
        return block_grid_parameters(weight, kind)
    maxq = (1 << bits) - 1
    if symmetric_grid(bits):
        middle = 1 << (bits - 1)
        scale = (weight.abs().amax(dim=1).clamp(min=1e-8) / (middle - 1)).to(SCALE_DTYPE).float()
        # bf16 rounding may shrink the scale a little: the largest weight then rounds to 128 + 128, clamped
        return scale, torch.full_like(scale, middle)
    low = weight.min(dim=1).values.clamp(max=0)
    high = weight.max(dim=1).values.clamp(min=0)
    flat = (low == 0) & (high == 0)
    low, high = torch.where(flat, -1.0, low), torch.where(flat, 1.0, high)
    scale = ((high - low) / maxq).to(SCALE_DTYPE).float()
    return scale, torch.round(-low / scale).clamp(0, maxq)


def quantize_column(column: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers for ``column`` (any shape matching scale/zero) on the grid."""
    return torch.clamp(torch.round(column / scale) + zero, 0, (1 << bits) - 1)


def _group_bounds(columns: int, group_size: int) -> int:
    return columns if group_size == -1 else group_size


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int, grid_kind: str = "minmax") -> QuantizedWeight:
    """Round-to-nearest on the same grid as GPTQ: the baseline GPTQ must beat."""
    weight = weight.detach().float()
    _, columns = weight.shape
    size = _group_bounds(columns, group_size)
    q = torch.empty_like(weight, dtype=torch.uint8)
    scales, zeros = [], []
    for start in range(0, columns, size):
        part = weight[:, start : start + size]
        scale, zero = grid_parameters(part, bits, grid_kind)
        q[:, start : start + size] = quantize_column(part, scale[:, None], zero[:, None], bits).to(torch.uint8)
        scales.append(scale)
        zeros.append(zero)
    return QuantizedWeight(q, torch.stack(scales, 1).to(SCALE_DTYPE), torch.stack(zeros, 1).to(torch.uint8), None)


def damped_inverse_cholesky(hessian: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, retrying with more damping if H is
    numerically not positive definite (a rare calibration set that barely excites a layer)."""
    mean_diagonal = torch.mean(torch.diag(hessian))
    damp = damp_percent
    for _ in range(6):
        damped = hessian.clone()
        damped.diagonal().add_(damp * mean_diagonal)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        damp *= 10
    raise ValueError(
        f"the Hessian is not positive definite even with damping {damp / 10:g}: the calibration data does not "
        "excite this layer; attach more or more varied data."
    )


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int = 128,
    damp_percent: float = 0.01,
    act_order: bool = False,
    block_size: int = BLOCK_SIZE,
    grid_kind: str = "minmax",
) -> QuantizedWeight:
    """GPTQ for ``weight`` [out, in] given ``hessian`` [in, in] (2 X X^T averaged over calibration tokens)."""
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    rows, columns = W.shape
    if H.shape != (columns, columns):
        raise ValueError(f"the Hessian is {tuple(H.shape)}; a weight with {columns} input columns needs ({columns}, {columns})")
    # Inputs that were exactly zero on every calibration token (GELU underflows to 0 for strongly negative
    # pre-activations: 325 of Whisper tiny.en's last encoder MLP channels on short clips padded with
    # silence) are rounded to nearest, their error passed to no other column. The reference code zeroes
    # their weights instead, which is right only if they stay zero on every other input: on other speech
    # they did not, and Whisper's word error rate went from 1.4% to 14%.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = damped_inverse_cholesky(H, damp_percent)

    size = _group_bounds(columns, group_size)
    # a block never splits a group, so each group's grid is taken from fully updated columns
    block_size = max(block_size, size) if group_size != -1 else block_size
    if group_size != -1 and block_size % size:
        block_size = size * max(1, block_size // size)
    # work on W^T: a column of W is then a contiguous row, and each rank-1 update runs over
    # contiguous memory (about 2x faster than on strided columns)
    WT = W.t().contiguous()
    QT = torch.empty(columns, rows, dtype=torch.uint8, device=W.device)
    scales, zeros = [], []
    scale = zero = None
    if group_size == -1:
        scale, zero = grid_parameters(W, bits, grid_kind)
        scales.append(scale)
        zeros.append(zero)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = WT[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if group_size != -1 and (i1 + i) % size == 0:
                scale, zero = grid_parameters(W1[i : i + size].t(), bits, grid_kind)
                scales.append(scale)
                zeros.append(zero)
            w = W1[i]
            q = quantize_column(w, scale, zero, bits)
            QT[i1 + i] = q.to(torch.uint8)
            error = (w - scale * (q - zero)) / Hinv1[i, i]
            W1[i:].addr_(Hinv1[i, i:], error, alpha=-1.0)  # spread the error over the columns left
            Err1[i] = error
        WT[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1.0)  # the lazy batch update
    return QuantizedWeight(
        QT.t().contiguous(), torch.stack(scales, 1).to(SCALE_DTYPE), torch.stack(zeros, 1).to(torch.uint8), perm
    )


class HessianAccumulator:
    """Running H = 2/n * sum(x x^T) over the n input rows seen so far, in fp32."""

    def __init__(self, columns: int, device: torch.device | str = "cpu") -> None:
        self.hessian = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.rows = 0

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1]).float()
        new = x.shape[0]
        if new == 0:
            return
        total = self.rows + new
        # H <- H * n / (n + m) + 2 / (n + m) * x^T x, as the reference code keeps it (bounded magnitude)
        self.hessian.mul_(self.rows / total).addmm_(x.t(), x, alpha=2.0 / total)
        self.rows = total
