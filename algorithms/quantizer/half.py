"""half: cast the model to bfloat16 or float16, halving the bytes of every floating-point weight.

Callers keep passing what their tokenizer or processor gives them: floating inputs (audio features,
pixel values, input embeddings) are cast to the model's dtype by a forward pre-hook on the model and
on its encoder, which ``generate`` of encoder-decoder models (Whisper) calls directly.

On CPU, bfloat16 is the one to pick: with AVX512-BF16 or AMX a prefill matrix product runs about 2x
faster than fp32, while float16 matrix products without AVX512-FP16/AMX-FP16 fall back to a slow path
(measured here 30x slower than fp32 for a 128x576 @ 576x1536 product). Without bf16 units (AVX2 CPUs:
AMD before Zen 4, most Intel before Sapphire Rapids) bf16 products are emulated too (0.22x fp32's prefill
on an AVX2 EPYC). check_settings warns about both (smashlib.layers.cpu_features).
Decode at batch 1 is matrix-vector work bound by memory, where half precision gains little.
See docs/algorithms.md for measured numbers.
"""
from __future__ import annotations

import warnings

import torch
from ConfigSpace import Categorical

from smashlib.algorithm import Algorithm
from smashlib.casting import DTYPES, cast_model, prepare_cast_model
from smashlib.errors import UnsupportedModelError
from smashlib.layers.cpu_features import has_native_bf16, has_native_fp16


class Half(Algorithm):
    name = "half"
    group = "quantizer"
    summary = "Cast weights to bfloat16 or float16 (2x smaller; bf16 prefill faster on CPUs with bf16 units)."
    hyperparameters = (Categorical("dtype", ["bfloat16", "float16"], default="bfloat16"),)

    def check_settings(self, settings, device):
        if device != "cpu":
            return
        if settings["dtype"] == "float16" and not has_native_fp16():
            warnings.warn(
                "half_dtype='float16' on this CPU: without float16 matrix units, float16 matrix products take a "
                "slow path (measured 30x slower than float32 for prefill). Use half_dtype='bfloat16' on CPU.",
                stacklevel=4,  # check_settings < check_before_smashing < smash < the caller
            )
        elif settings["dtype"] == "bfloat16" and not has_native_bf16():
            warnings.warn(
                "half on this CPU: it has no bfloat16 units (AVX512-BF16 or AMX), so bfloat16 matrix products are "
                "emulated (prefill measured at 0.22x float32's on an AVX2 EPYC); decode, bound by bytes read, still "
                "gains. For prefill speed here, use an 8-bit quantizer (gptq_weight_bits=8), whose long calls run "
                "in float32 on such CPUs.",
                stacklevel=4,
            )

    def check_model(self, model: torch.nn.Module) -> None:
        if not any(p.is_floating_point() for p in model.parameters()):
            raise UnsupportedModelError("half needs floating-point parameters; this model has none.")

    def apply(self, model, settings, components):
        return cast_model(model, DTYPES[settings["dtype"]])

    def prepare_for_loading(self, model, settings):
        return model.to(DTYPES[settings["dtype"]])

    def after_loading(self, model, settings):
        prepare_cast_model(model, DTYPES[settings["dtype"]])
        return model
