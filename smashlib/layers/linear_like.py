"""Linear-like layers: ``nn.Linear`` and GPT-2's ``Conv1D`` (a Linear whose weight is stored transposed).

Quantizers that swap these layers for their own ask the same questions of both: their sizes, and the
weight in ``nn.Linear``'s (out_features, in_features) orientation. Which layers are linear-like is
:func:`smashlib.targets.is_linear` (exact types: a quantized layer that subclasses ``nn.Linear``, as
bitsandbytes' do, is never taken for a plain one and quantized twice; the subclasses that compute a plain
product, such as Falcon's, are). Orientation is told by ``isinstance(module, nn.Linear)``: Conv1D is not one.
"""
from __future__ import annotations

import torch
from torch import nn

from smashlib.targets import is_linear

#: The one linear test, under the name this module has always exported.
is_linear_like = is_linear


def linear_sizes(module: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, has_bias) of a linear-like layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, module.bias is not None
    in_features, out_features = module.weight.shape  # Conv1D stores (in, out)
    return in_features, out_features, module.bias is not None


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as nn.Linear holds it, (out_features, in_features), detached."""
    weight = module.weight.detach()
    return weight if isinstance(module, nn.Linear) else weight.t().contiguous()
