"""bnb_4bit: 4-bit NF4/FP4 weights with bitsandbytes (QLoRA's format), on CPU and CUDA.

Every nn.Linear (and GPT-2 Conv1D) that ``target_modules`` selects (by default all but the output head) becomes a bitsandbytes Linear4bit: weights in
blocks of ``blocksize`` values, each block scaled by its absolute maximum, optionally double-quantized
(the absmax values themselves stored as 8 bits). Weights are about 4.5 bits per value on disk. On CPUs
with AVX512-BF16, bitsandbytes runs a repacked bf16 kernel, taken when ``compute_dtype`` is bfloat16;
smashlib's layer keeps that repacking out of the saved weights (see smashlib/layers/bnb_linear.py and
docs/bitsandbytes.md for the measured speed and quality).
"""
from __future__ import annotations

from ConfigSpace import Categorical
from torch import nn

from smashlib.errors import MissingPackageError
from smashlib.module_swap import ModuleSwapQuantizer
from smashlib.targets import target_modules_hyperparameter

COMPUTE_DTYPES = ("bfloat16", "float32", "float16")
#: First bitsandbytes release with a CUDA kernel for 4-bit blocks of 32 (the CPU path takes any size).
BLOCKSIZE_32_ON_CUDA = "0.50"


def layer_options(settings: dict) -> dict:
    import torch

    return {
        "quant_type": settings["quant_type"],
        "double_quant": bool(settings["double_quant"]),
        "compute_dtype": getattr(torch, settings["compute_dtype"]),
        "blocksize": int(settings["blocksize"]),
    }


class Bnb4bit(ModuleSwapQuantizer):
    name = "bnb_4bit"
    group = "quantizer"
    runs_on = ("cpu", "cuda")
    needs_packages = ("bitsandbytes>=0.45",)
    extra = "bnb"
    summary = "4-bit NF4/FP4 weights with bitsandbytes (double quant, bf16 kernel on AVX512-BF16 CPUs); CPU and CUDA."
    hyperparameters = (
        Categorical("quant_type", ["nf4", "fp4"], default="nf4"),
        Categorical("double_quant", [True, False], default=True),
        Categorical("compute_dtype", list(COMPUTE_DTYPES), default="bfloat16"),
        Categorical("blocksize", [32, 64, 128, 256], default=64),
        target_modules_hyperparameter("all_but_output_head"),
    )

    def check_settings(self, settings: dict, device: str) -> None:
        from packaging.version import Version

        if device == "cuda" and int(settings["blocksize"]) == 32:
            import importlib.metadata

            found = importlib.metadata.version("bitsandbytes")
            if Version(found) < Version(BLOCKSIZE_32_ON_CUDA):
                raise MissingPackageError(
                    f"bnb_4bit_blocksize=32 on CUDA needs bitsandbytes>={BLOCKSIZE_32_ON_CUDA} (found {found}): "
                    "pip install -U bitsandbytes, or choose bnb_4bit_blocksize=64."
                )

    def make_quantized(self, layer: nn.Module, settings: dict) -> nn.Module:
        from smashlib.layers.bnb_linear import Linear4bit
        from smashlib.layers.linear_like import linear_weight

        return Linear4bit.from_weight(linear_weight(layer), layer.bias, **layer_options(settings))

    def make_empty(self, layer: nn.Module, settings: dict) -> nn.Module:
        from smashlib.layers.bnb_linear import Linear4bit
        from smashlib.layers.linear_like import linear_sizes

        in_features, out_features, bias = linear_sizes(layer)
        return Linear4bit(in_features, out_features, bias, device=layer.weight.device, **layer_options(settings))
