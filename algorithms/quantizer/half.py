"""half: cast the model to bfloat16 or float16, halving the bytes of every floating-point weight.

Callers keep passing what their tokenizer or processor gives them: floating inputs (audio features,
pixel values, input embeddings) are cast to the model's dtype by a forward pre-hook on the model and
on its encoder, which ``generate`` of encoder-decoder models (Whisper) calls directly.

On CPU, bfloat16 is the one to pick: with AVX512-BF16 or AMX a prefill matrix product runs about 2x
faster than fp32, while float16 matrix products without AVX512-FP16/AMX-FP16 fall back to a slow path
(measured here 30x slower than fp32 for a 128x576 @ 576x1536 product); check_settings warns about it.
Decode at batch 1 is matrix-vector work bound by memory, where half precision gains little.
See docs/algorithms.md for measured numbers.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from copy import copy
from typing import Any

import torch
from ConfigSpace import Categorical

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating tensor in it (nested in lists, tuples, dicts, ModelOutputs) cast to
    ``dtype``; containers keep their type, everything else is returned as is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, Mapping):
        if not isinstance(value, dict):
            return value  # read-only or exotic mappings: leave them alone
        cast = copy(value)  # keeps the class (ModelOutput, BatchFeature) and its attributes
        for key, item in value.items():
            cast[key] = cast_floats(item, dtype)
        return cast
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # named tuple
        return type(value)(*(cast_floats(item, dtype) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(cast_floats(item, dtype) for item in value)
    return value


def cast_inputs_hook(dtype: torch.dtype):
    """A forward pre-hook casting floating inputs to ``dtype``."""

    def hook(module, args, kwargs):
        return cast_floats(args, dtype), cast_floats(kwargs, dtype)

    hook.smashlib_casts_to = dtype  # how after_loading finds (and replaces) a hook of ours
    return hook


def entry_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that receive the caller's inputs: the model, and its encoder when ``generate`` calls
    that one directly (encoder-decoder models)."""
    modules = [model]
    get_encoder = getattr(model, "get_encoder", None)
    if callable(get_encoder):
        try:
            encoder = get_encoder()
        except (AttributeError, NotImplementedError, TypeError):  # decoder-only models may refuse
            encoder = None
        if isinstance(encoder, torch.nn.Module) and encoder is not model:
            modules.append(encoder)
    return modules


def install_input_casting(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Put one casting pre-hook on each entry module, replacing any this function put there before."""
    for module in entry_modules(model):
        for key, hook in list(module._forward_pre_hooks.items()):
            if getattr(hook, "smashlib_casts_to", None) is not None:
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
        module.register_forward_pre_hook(cast_inputs_hook(dtype), with_kwargs=True)


def fp16_is_slow_here() -> bool:
    """Whether this CPU lacks float16 matrix units (AMX-FP16); AVX512-FP16 is not visible to torch."""
    has_amx_fp16 = getattr(torch.cpu, "_is_amx_fp16_supported", None)
    return not (callable(has_amx_fp16) and has_amx_fp16())


class Half(Algorithm):
    name = "half"
    group = "quantizer"
    summary = "Cast weights to bfloat16 or float16 (2x smaller; bf16 prefill faster on CPUs with bf16 units)."
    hyperparameters = (Categorical("dtype", ["bfloat16", "float16"], default="bfloat16"),)

    def check_settings(self, settings, device):
        if device == "cpu" and settings["dtype"] == "float16" and fp16_is_slow_here():
            warnings.warn(
                "half_dtype='float16' on this CPU: without float16 matrix units, float16 matrix products take a "
                "slow path (measured 30x slower than float32 for prefill). Use half_dtype='bfloat16' on CPU.",
                stacklevel=4,  # check_settings < check_before_smashing < smash < the caller
            )

    def check_model(self, model: torch.nn.Module) -> None:
        if not any(p.is_floating_point() for p in model.parameters()):
            raise UnsupportedModelError("half needs floating-point parameters; this model has none.")

    def apply(self, model, settings, components):
        model = model.to(DTYPES[settings["dtype"]])
        return self.after_loading(model, settings)

    def prepare_for_loading(self, model, settings):
        return model.to(DTYPES[settings["dtype"]])

    def after_loading(self, model, settings):
        install_input_casting(model, DTYPES[settings["dtype"]])
        return model
