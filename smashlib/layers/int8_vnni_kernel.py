"""The int8 decode kernel: 8-bit weights times activations in 16-bit blocks, on AVX512-VNNI or AVX2.

At batch 1 a decode step reads every weight once, so its speed is the speed at which the matrix-vector
products read bytes. PyTorch's int8 weight-only kernel (``aten._weight_int8pack_mm``, bf16 activations)
converts each weight to float before multiplying and reads about 9 GB/s on 2 cores of this project's
machine: SmolLM2-135M's 211 products take 14.6 ms per token. Written as int16 per block of 32 values
(one float scale a block, a rounding of 1/65534 of the block's largest value, finer than bf16's), the
activations multiply the int8 weights on VNNI's ``dpwssd``, which sums int16 products exactly in int32:
the same products take 6.3 ms (about 20 GB/s, this machine's memory bandwidth) and equal the weight-only
ones to a relative 2e-5. CPUs without VNNI (AVX2 only: AMD before Zen 4, Intel before Ice Lake) get a build
that sums the same pairs with AVX2's ``vpmaddwd`` (:data:`INSTRUCTION_SETS`): the same int32 sums, so the
same outputs, one instruction more per 16 weights. Both prefetch the weight 2 KB ahead of the product: on an
AVX2 EPYC the hardware prefetcher alone kept a core at about 7 GB/s, and a decode step's 211 products went
from 12.5 to 10.5 ms with it (median of 15 alternating rounds in one process, 2 threads; a loop that only
reads the same bytes took 10.2-11.1 ms). (int8 activations, llama.cpp's Q8_0 way, are no faster here and cost SmolLM2
0.7% perplexity over the weight-only product with every product on them: docs/cpu_recipe.md.)

No library ships such a kernel for this torch on x86 (torchao's CPU kernels are not built for it,
fbgemm's dynamic kernel rounds activations to int8 per tensor), so it is the ~50 lines of
``int8_vnni_matvec.cpp``, built by ``torch.utils.cpp_extension`` once per machine and torch version into
smashlib's cache (a C++ compiler is needed; the build takes about 35 s) and registered with PyTorch's
dispatcher as the op ``smashlib::int8_vnni_matvec`` (its C++ ``TORCH_LIBRARY``), so an eager call costs
what an aten op costs and ``torch.compile`` keeps it as one call. :func:`unavailable_reason` says why it
cannot run here (not x86 with AVX2, no compiler, the build failed); 8-bit layers then use the
weight-only kernel (smashlib.layers.lowbit_kernels).

The same library holds the 2-4-bit ops (``smashlib::int4_matvec``, ``smashlib::int4_dequantize``): the same
int16 activation blocks times ``q - zero`` of 4-bit integers packed two a byte with one bf16 scale and
integer zero per block of 32 (:func:`int4_kernel_layout`). They live in this one source so that one build
(one compile of 35-60 s) serves both widths.

Prefill on CPUs without bf16 units runs the library's fp32 GEMMs (``smashlib::int8_gemm``,
``smashlib::int4_gemm``): the weight dequantized in C++ with its scales folded in, then one MKL product.
Converting in PyTorch and scaling the output afterwards took a fifth longer for 8 bits (an AVX2 EPYC, one
prefill's 210 products of SmolLM2-135M, median of 15 alternating rounds: 473 against 373 ms; 426 against
352 ms for 4 bits; 386 ms on fp32 weights). And the mat-vec ops have C functions for AOTInductor
(:func:`c_shims`), so a compiled decoding step (smashlib.aot_decode) calls them directly.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import threading
from pathlib import Path

import torch

from smashlib.bundled import cache_root
from smashlib.layers import cpu_features

SOURCE = Path(__file__).with_name("int8_vnni_matvec.cpp")
#: Activations are scaled per block of this many values: the layer's input size must be a multiple.
BLOCK = 32
#: The int16 range the activations are scaled into.
INT16_MAX = 32767
#: The builds, best first: (name, the CPU features it needs as Linux /proc/cpuinfo names them, the
#: compiler's flags for them). The source picks VNNI's dpwssd when its flags are set, else AVX2's vpmaddwd.
INSTRUCTION_SETS = (
    ("avx512_vnni", ("avx2", "fma", "avx512f", "avx512vl", "avx512_vnni"),
     ("-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512vnni")),
    ("avx2", ("avx2", "fma"), ("-mavx2", "-mfma")),
)
_OP = "int8_vnni_matvec"


def instruction_set() -> str | None:
    """The best build this CPU runs ("avx512_vnni" or "avx2"), or None."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = cpu_features.cpu_flags()
    return next((name for name, needed, _ in INSTRUCTION_SETS if set(needed) <= flags), None)


def _compile_flags() -> list[str]:
    chosen = instruction_set()
    return ["-O3", "-fopenmp", *next(flags for name, _, flags in INSTRUCTION_SETS if name == chosen)]


def _hardware_reason() -> str | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU with AVX2 (this is {platform.machine()})"
    if instruction_set() is None:
        missing = [flag for flag in INSTRUCTION_SETS[-1][1] if flag not in cpu_features.cpu_flags()]
        return f"needs a CPU with AVX2 and FMA (missing here: {', '.join(missing)})"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "needs a C++ compiler (g++) to build it once"
    return None


def build_folder() -> Path:
    """Where the built kernel is kept: one folder per torch version (its ABI) and instruction set (a cache
    copied to another CPU builds its own) under smashlib's cache."""
    torch_folder = f"torch-{torch.__version__.replace('+', '-')}"
    return cache_root() / "extensions" / torch_folder / f"{_OP}-{instruction_set()}"


#: The op (or None) and the reason it is missing, once per process.
_BUILT: dict[str, tuple[object | None, str | None]] = {}
#: One build at a time: tune()'s Dask trials load models in threads, and the op is registered once.
_BUILDING = threading.Lock()


@torch.compiler.disable  # built eagerly even when a compiled model's first call asks for it
def _build() -> tuple[object | None, str | None]:
    if _OP not in _BUILT:
        with _BUILDING:
            if _OP not in _BUILT:
                _BUILT[_OP] = _build_now()
    return _BUILT[_OP]


def _source_stamp() -> str:
    """What the built library was made from: the source and the flags (the torch version names the folder)."""
    return hashlib.sha256((SOURCE.read_text() + " ".join(_compile_flags())).encode()).hexdigest()


def _build_now() -> tuple[object | None, str | None]:
    reason = _hardware_reason()
    if reason is not None:
        return None, reason
    folder = build_folder()
    library, stamp = folder / f"smashlib_{_OP}.so", folder / "source.sha256"
    if library.is_file() and stamp.is_file() and stamp.read_text() == _source_stamp():
        torch.ops.load_library(str(library))  # built before from this very source: skip the 2 s of checking
    else:
        reason = _compile(folder)
        if reason is not None:
            return None, reason
        stamp.write_text(_source_stamp())
    # its C functions made global, so that a library AOTInductor built to call them resolves them (c_shims)
    ctypes.CDLL(str(library), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    torch.library.register_fake(f"smashlib::{_OP}")(_matvec_shape)
    torch.library.register_fake("smashlib::int4_matvec")(_int4_matvec_shape)
    torch.library.register_fake("smashlib::int4_dequantize")(_int4_dequantize_shape)
    torch.library.register_fake("smashlib::int8_gemm")(_matvec_shape)
    torch.library.register_fake("smashlib::int4_gemm")(_int4_matvec_shape)
    return getattr(torch.ops.smashlib, _OP), None


def _compile(folder: Path) -> str | None:
    """Build the library into ``folder`` with torch.utils.cpp_extension (and load it); why not, if it failed."""
    from torch.utils.cpp_extension import load_inline

    folder.mkdir(parents=True, exist_ok=True)
    try:
        load_inline(
            f"smashlib_{_OP}", cpp_sources=SOURCE.read_text(), extra_cflags=_compile_flags(),
            extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=False, is_python_module=False,
        )
    except Exception as error:  # noqa: BLE001 - any compiler or linker failure: say what, run the fallback
        return f"did not build ({type(error).__name__}: {str(error).strip().splitlines()[-1][:200]})"
    return None


def unavailable_reason() -> str | None:
    """None when the kernel runs here (building it on the first call in a process), else why not, in words."""
    return _build()[1]


def _op(name: str):
    """The library's op ``smashlib::<name>``, built first if need be; RuntimeError saying why if it cannot be."""
    op, reason = _build()
    if op is None:
        raise RuntimeError(f"the int8 VNNI kernel {reason}")
    return getattr(torch.ops.smashlib, name)


#: The ops' C functions for AOTInductor (the extern "C" block of the source), declared as it declares them.
C_SHIMS = {
    "int8_vnni_matvec": "AOTITorchError aoti_torch_cpu_int8_vnni_matvec(AtenTensorHandle x, AtenTensorHandle weight, "
                        "AtenTensorHandle scales, AtenTensorHandle* ret0)",
    "int4_matvec": "AOTITorchError aoti_torch_cpu_int4_matvec(AtenTensorHandle x, AtenTensorHandle packed, "
                   "AtenTensorHandle scales, AtenTensorHandle zeros, AtenTensorHandle* ret0)",
}


def c_shims() -> dict:
    """``aot_inductor.custom_ops_to_c_shims`` for the mat-vec ops: a library AOTInductor builds with it calls
    the kernels as C functions, where its proxy executor would box every call's arguments through the
    dispatcher (small allocations, hundreds of calls a token). Empty when the kernel is not built here
    (the layers then do not call it)."""
    if _build()[0] is None:
        return {}
    return {getattr(torch.ops.smashlib, name).default: [declaration] for name, declaration in C_SHIMS.items()}


def int8_vnni_matvec(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x`` [M, K] (float32 or bf16) times the int8 ``weight`` [N, K] with one float32 ``scales`` [N] per
    row: float32 [M, N] (the op ``smashlib::int8_vnni_matvec``)."""
    return _op(_OP)(x, weight, scales)


def _matvec_shape(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)


def int4_matvec(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """``x`` [M, K] times a weight of up to 4 bits in the kernel's layout (:func:`int4_kernel_layout`):
    float32 [M, N] (the op ``smashlib::int4_matvec``; activations as int16 blocks, as for 8 bits)."""
    return _op("int4_matvec")(x, packed, scales, zeros)


def int4_dequantize(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The float32 weight [N, K] of the kernel's layout (the op ``smashlib::int4_dequantize``), for prefill's GEMMs."""
    return _op("int4_dequantize")(packed, scales, zeros)


def int4_kernel_layout(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The 4-bit kernel's layout from integers ``q`` [N, K] in [0, 15] and one scale and zero per block of 32
    columns ([N, K / 32] each): (packed [N, K / 2] uint8, bf16 scales, uint8 zeros). Byte j of a block holds
    q[j] in its low nibble and q[16 + j] in its high one (the kernel unpacks each half with one instruction)."""
    rows, columns = q.shape
    blocks = q.to(torch.uint8).reshape(rows, columns // BLOCK, 2, BLOCK // 2)
    packed = (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(rows, columns // 2).contiguous()
    return packed, scales.to(torch.bfloat16).contiguous(), zeros.to(torch.uint8).contiguous()


def _int4_matvec_shape(x, packed, scales, zeros) -> torch.Tensor:
    return x.new_empty((x.shape[0], packed.shape[0]), dtype=torch.float32)


def _int4_dequantize_shape(packed, scales, zeros) -> torch.Tensor:
    return packed.new_empty((packed.shape[0], packed.shape[1] * 2), dtype=torch.float32)


def reference_int4_matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What :func:`int4_matvec` computes, in plain PyTorch, given the dequantized ``weight`` [N, K]: the
    activations rounded to int16 blocks exactly as for 8 bits, times the weight."""
    return reference_matvec(x, weight, torch.ones(weight.shape[0]))


def reference_matvec(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The same product in plain PyTorch: what the kernel must equal up to float summation order."""
    rows = x.float().reshape(x.shape[0], -1, BLOCK)
    d = rows.abs().amax(-1, keepdim=True) / INT16_MAX
    inverse = torch.where(d > 0, 1 / d, torch.zeros_like(d))  # multiplied, as the kernel does: the same ties
    a = (rows * inverse).round()
    return ((a * d).reshape(x.shape) @ weight.float().T) * scales.float()
