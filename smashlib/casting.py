"""Casting a model to a half-precision dtype, and the caller's inputs with it.

Used by ``half`` (the whole model) and by quantizers whose non-quantized parts run in bf16 (``gptq``
with ``compute_dtype="bfloat16"``). Callers keep passing what their tokenizer or processor gives them:
floating inputs (audio features, pixel values, input embeddings) are cast to the model's dtype by a
forward pre-hook on the model and on its encoder, which ``generate`` of encoder-decoder models
(Whisper) calls directly. Their decode-step attention runs in float32 on CPU, where PyTorch's bf16
attention kernel is the slower one (smashlib.layers.decode_attention).
"""
from __future__ import annotations

from collections.abc import Mapping
from copy import copy
from typing import Any

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating tensor in it (nested in lists, tuples, dicts, ModelOutputs) cast to
    ``dtype``; containers keep their type, everything else is returned as is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if type(value) is dict:  # a plain dict (forward's kwargs): built anew, which torch.compile traces (copy() it cannot)
        return {key: cast_floats(item, dtype) for key, item in value.items()}
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


def prepare_cast_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """What a model whose weights are in ``dtype`` needs around it (after casting, and after loading one):
    the input-casting pre-hooks, and float32 attention for decode steps on CPU."""
    from smashlib.layers.decode_attention import use_float32_decode_attention

    install_input_casting(model, dtype)
    use_float32_decode_attention(model)
    return model


def cast_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` with its floating tensors in ``dtype``, prepared for it (:func:`prepare_cast_model`)."""
    return prepare_cast_model(model.to(dtype), dtype)
