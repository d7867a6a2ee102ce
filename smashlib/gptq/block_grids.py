"""llama.cpp's block grids (Q8_0, Q4_0, Q4_1) as GPTQ grids, so a GPTQ result is exactly a GGUF file.

GGUF stores a weight row in blocks of 32 values, each block with an fp16 scale ``d`` (and for Q4_1 an
fp16 minimum ``m``):

    Q8_0  w = d * q          q in [-128, 127] (llama.cpp picks d = max|w| / 127)
    Q4_0  w = d * (q - 8)    q in [0, 15]     (d = w_max / -8, w_max the value of largest magnitude)
    Q4_1  w = d * q + m      q in [0, 15]     (d = (max - min) / 15, m = min)

smashlib's packed layers store ``w = scale * (q - zero)`` with bf16 scales and integer zero points, so
each grid here is chosen to be representable in *both*: the scale is rounded to a value that bf16 and
fp16 hold exactly, and for Q4_1 the minimum is ``m = -d * zero`` with ``d`` rounded to 7 significant
bits, so that ``d * zero`` (at most 4 more bits) is an exact fp16 too. The solver quantizes with these
rounded scales, hence ``gguf.quants.dequantize`` of the exported blocks gives back the very weights
smashlib computed, bit for bit.
"""
from __future__ import annotations

import torch

#: grid name -> (bits, the group size GGUF's blocks have)
BLOCK_GRIDS: dict[str, tuple[int, int]] = {"q8_0": (8, 32), "q4_0": (4, 32), "q4_1": (4, 32)}

#: the smallest positive fp16 (a subnormal): scales below it would round to 0 in the file
_FP16_TINY = 2.0**-24


def representable_scale(scale: torch.Tensor, significant_bits: int = 8) -> torch.Tensor:
    """``scale`` rounded to ``significant_bits`` and then to fp16: exact in fp16 and in bf16 (whose 8
    significant bits cover any fp16 value of at most 8), never 0 (the sign is kept: Q4_0 scales may be
    negative)."""
    sign = torch.where(scale < 0, -1.0, 1.0)
    magnitude = scale.abs().float().clamp(min=_FP16_TINY)
    mantissa, exponent = torch.frexp(magnitude)
    steps = float(1 << significant_bits)
    rounded = torch.ldexp(torch.round(mantissa * steps) / steps, exponent)
    return (sign * rounded).to(torch.float16).float()


def block_grid_parameters(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row of ``weight`` [out, columns] (one block) on llama.cpp grid ``kind``."""
    weight = weight.float()
    if kind == "q8_0":
        scale = representable_scale(weight.abs().amax(dim=1) / 127)
        return scale, torch.full_like(scale, 128)
    if kind == "q4_0":
        index = weight.abs().argmax(dim=1, keepdim=True)
        signed_max = weight.gather(1, index).squeeze(1)
        scale = representable_scale(signed_max / -8)
        return scale, torch.full_like(scale, 8)
    if kind == "q4_1":
        # the range includes 0 so the minimum is an integer number of steps below it (zero in [0, 15])
        low = weight.min(dim=1).values.clamp(max=0)
        high = weight.max(dim=1).values.clamp(min=0)
        scale = representable_scale((high - low) / 15, significant_bits=7)
        return scale, torch.round(-low / scale).clamp(0, 15)
    raise ValueError(f"unknown block grid {kind!r}: one of {sorted(BLOCK_GRIDS)}")
