"""half: cast the model to bfloat16 or float16, halving the bytes of every floating-point weight.

On CPUs with bf16 matrix units (AVX512-BF16, AMX) prefill runs about 3x faster than fp32; decode at
batch 1 is matrix-vector work and can be slower in bf16, so measure both (see docs/benchmarks.md).
"""
from __future__ import annotations

from typing import Any

import torch
from ConfigSpace import Categorical

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    return value


def cast_inputs_hook(dtype: torch.dtype):
    """A forward pre-hook that casts floating inputs (pixel values, audio features) to the model's dtype,
    so callers keep passing what the processor gives them."""

    def hook(module, args, kwargs):
        return _cast_floats(args, dtype), _cast_floats(kwargs, dtype)

    return hook


class Half(Algorithm):
    name = "half"
    group = "quantizer"
    summary = "Cast weights to bfloat16 or float16 (2x smaller; faster prefill on CPUs with bf16 units)."
    hyperparameters = (Categorical("dtype", ["bfloat16", "float16"], default="bfloat16"),)

    def check_model(self, model: torch.nn.Module) -> None:
        if not any(p.is_floating_point() for p in model.parameters()):
            raise UnsupportedModelError("half needs floating-point parameters; this model has none.")

    def apply(self, model, settings, components):
        model = model.to(DTYPES[settings["dtype"]])
        return self.after_loading(model, settings)

    def prepare_for_loading(self, model, settings):
        return model.to(DTYPES[settings["dtype"]])

    def after_loading(self, model, settings):
        handle = getattr(model, "_smashlib_half_hook", None)
        if handle is not None:
            handle.remove()
        model._smashlib_half_hook = model.register_forward_pre_hook(
            cast_inputs_hook(DTYPES[settings["dtype"]]), with_kwargs=True
        )
        return model
