"""A packed GPTQ layer as llama.cpp's Q8_0 / Q4_0 / Q4_1 blocks (the bytes GGUF stores), checked exact.

A block is 32 consecutive input columns of one row (ggml-common.h):

    Q8_0  fp16 d, int8 qs[32]                          w = d * qs
    Q4_0  fp16 d, uint8 qs[16] (nibbles)               w = d * (q - 8)
    Q4_1  fp16 d, fp16 m, uint8 qs[16] (nibbles)       w = d * q + m

with value j in the low nibble of byte j and value j + 16 in its high nibble. smashlib's layer holds
``w = scale * (q - zero)``; the mapping is exact only where fp16 holds the scale (and ``scale * zero``
for Q4_1) exactly, which GPTQ's ``gptq_grid`` settings guarantee. Anything else is refused with the fix,
never rounded again behind the user's back.
"""
from __future__ import annotations

import numpy as np
import torch

from smashlib.errors import UnsupportedExportError
from smashlib.layers.packed_int import PackedLinear

BLOCK = 32


def _fp16_exact(values: torch.Tensor) -> bool:
    values = values.float()
    return bool(torch.equal(values.half().float(), values))


def block_type(name: str, layer: PackedLinear) -> str:
    """"q8_0", "q4_0" or "q4_1": the llama.cpp type that holds ``layer`` exactly (or a clear error)."""
    fix = "smash with gptq_grid='q8_0', 'q4_0' or 'q4_1' (gptq_group_size=32) so the weights land on llama.cpp's grids"
    if layer.group_size != BLOCK or layer.perm is not None or layer.bits not in (4, 8):
        raise UnsupportedExportError(
            f"{name} is {layer.bits}-bit in groups of {layer.group_size}"
            f"{' with act-order' if layer.perm is not None else ''}; GGUF's Q8_0/Q4_0/Q4_1 blocks are 8 or 4 bits "
            f"over 32 consecutive columns: {fix}."
        )
    if layer.in_features % BLOCK:
        raise UnsupportedExportError(f"{name} has {layer.in_features} input columns, not a multiple of GGUF's {BLOCK}.")
    _, zeros = layer.integers()
    scales = layer.scales.float()
    middle = 1 << (layer.bits - 1)
    if not _fp16_exact(scales):
        raise UnsupportedExportError(f"{name} has scales fp16 cannot hold exactly (bf16 min-max grid): {fix}.")
    if bool((zeros == middle).all()):
        return "q8_0" if layer.bits == 8 else "q4_0"
    if layer.bits == 4 and _fp16_exact(scales * zeros.float()):
        return "q4_1"
    raise UnsupportedExportError(f"{name} has zero points whose minimum (scale * zero) fp16 cannot hold exactly: {fix}.")


def _fp16_bytes(values: torch.Tensor) -> np.ndarray:
    """[rows, blocks] values as [rows, blocks, 2] little-endian fp16 bytes."""
    return values.float().half().numpy().astype("<f2").view(np.uint8).reshape(*values.shape, 2)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """[rows, blocks, 32] values in [0, 15] as [rows, blocks, 16] bytes (j low, j + 16 high)."""
    return (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)


def block_bytes(layer: PackedLinear, kind: str, row_order: torch.Tensor | None = None) -> np.ndarray:
    """The layer's GGUF data, uint8 [out, blocks * block bytes], rows taken in ``row_order`` if given."""
    q, zeros = layer.integers()
    scales = layer.scales
    if row_order is not None:
        q, zeros, scales = q[row_order], zeros[row_order], scales[row_order]
    rows = q.shape[0]
    q = q.numpy().reshape(rows, -1, BLOCK)
    d = _fp16_bytes(scales)
    if kind == "q8_0":
        parts = [d, (q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)]
    elif kind == "q4_0":
        parts = [d, _nibbles(q)]
    elif kind == "q4_1":
        parts = [d, _fp16_bytes(-scales.float() * zeros.float()), _nibbles(q)]
    else:
        raise ValueError(f"unknown block type {kind!r}")
    return np.concatenate(parts, axis=-1).reshape(rows, -1)
