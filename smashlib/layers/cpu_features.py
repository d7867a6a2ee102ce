"""What this CPU's vector units do natively, which decides the dtype of a CPU kernel's matrix products.

Half-precision matrix products are fast on a CPU only where it has units for them: bf16 with AVX512-BF16
or AMX (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later), fp16 with AMX-FP16. Elsewhere
oneDNN widens them in software: measured on an AVX2 AMD EPYC (Zen 3, 2 threads), a 128 x 576 @ 576 x 1536
product took 14.7 ms in bf16 against 2.1 ms in fp32, so a bf16 model's prefill ran at 0.22x fp32's
(docs/cpu_recipe.md). Decode at batch 1 reads bytes, and there half precision still gains where it
halves them.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux's /proc/cpuinfo names them (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _torch_says(name: str) -> bool:
    check = getattr(torch.cpu, name, None)  # private helpers: absent in some torch versions
    return bool(callable(check) and check())


def has_native_bf16() -> bool:
    """Whether bf16 matrix products run on bf16 units here (AVX512-BF16 or AMX-BF16)."""
    return _torch_says("_is_avx512_bf16_supported") or _torch_says("_is_amx_tile_supported") or bool(
        {"avx512_bf16", "amx_bf16"} & cpu_flags())


def has_native_fp16() -> bool:
    """Whether fp16 matrix products run on fp16 matrix units here (AMX-FP16; AVX512-FP16 is not visible to torch)."""
    return _torch_says("_is_amx_fp16_supported")


def has_vnni() -> bool:
    """Whether int8 dot products accumulate in int32 here (AVX512-VNNI or AVX-VNNI), which fbgemm needs to keep
    8-bit activations (smashlib.layers.int8_linear.reduce_range)."""
    return _torch_says("_is_vnni_supported")


def gemm_dtype() -> torch.dtype:
    """The dtype CPU kernels multiply matrices in when the choice is theirs: bf16 where it is native, else fp32."""
    return torch.bfloat16 if has_native_bf16() else torch.float32
