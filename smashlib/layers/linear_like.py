"""Linear-like layers: ``nn.Linear`` and GPT-2's ``Conv1D`` (a Linear whose weight is stored transposed).

Quantizers that swap these layers for their own ask the same questions of both: which layers of a
model to take, their sizes, and the weight in ``nn.Linear``'s (out_features, in_features) orientation.
Exact types are matched on purpose: a quantized layer that subclasses ``nn.Linear`` (bitsandbytes'
do) is never taken for a plain one and quantized twice.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from smashlib.modules import output_head_names, replace_module


def _conv1d_type() -> type | None:
    try:  # transformers is a dependency, imported here so that this module stays cheap to import
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def is_linear_like(module: nn.Module) -> bool:
    """Whether ``module`` is a plain nn.Linear or a transformers Conv1D (not a subclass of either)."""
    return type(module) is nn.Linear or type(module) is _conv1d_type()


def linear_sizes(module: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, has_bias) of a linear-like layer."""
    if type(module) is nn.Linear:
        return module.in_features, module.out_features, module.bias is not None
    in_features, out_features = module.weight.shape  # Conv1D stores (in, out)
    return in_features, out_features, module.bias is not None


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as nn.Linear holds it, (out_features, in_features), detached."""
    weight = module.weight.detach()
    return weight if type(module) is nn.Linear else weight.t().contiguous()


def linear_like_names(model: nn.Module, keep_output_head: bool) -> list[str]:
    """Names of the linear-like layers of ``model``, without the output head when ``keep_output_head``."""
    skip = output_head_names(model) if keep_output_head else set()
    return [name for name, module in model.named_modules() if name not in skip and is_linear_like(module)]


def swap_linear_like(model: nn.Module, keep_output_head: bool, make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every linear-like layer (but the output head when ``keep_output_head``) by ``make(layer)``, in
    the layer's train/eval mode, one at a time so that each full-precision weight can be freed before the
    next is converted.
    Returns how many layers were replaced."""
    names = linear_like_names(model, keep_output_head)
    for name in names:
        layer = model.get_submodule(name)
        # a new module starts in training mode; bitsandbytes picks other kernels in training mode
        replace_module(model, name, make(layer).train(layer.training))
    return len(names)
