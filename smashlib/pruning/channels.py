"""Keep a subset of a linear layer's output or input channels: the one operation structured pruning is made of.

Works on ``nn.Linear`` and on transformers' ``Conv1D`` (GPT-2), whose weight is stored transposed. The
layer keeps its class and gets new, smaller parameters, so the result is an ordinary layer that saves,
loads and quantizes like any other.
"""
from __future__ import annotations

import torch
from torch import nn

from smashlib.layers.linear_like import is_linear_like, linear_weight


def _is_linear(layer: nn.Module) -> bool:
    """nn.Linear orientation (weight (out, in)): nn.Linear and its subclasses; Conv1D is not one."""
    return isinstance(layer, nn.Linear)


def keep_outputs(layer: nn.Module, index: torch.Tensor) -> None:
    """Keep only the output channels ``index`` (sorted) of ``layer``."""
    if not is_linear_like(layer):
        raise TypeError(f"structured pruning cuts nn.Linear or Conv1D layers, not {type(layer).__name__}")
    with torch.no_grad():
        if _is_linear(layer):
            layer.weight = nn.Parameter(layer.weight[index].clone(), requires_grad=layer.weight.requires_grad)
            layer.out_features = len(index)
        else:  # Conv1D: weight (in, out)
            layer.weight = nn.Parameter(layer.weight[:, index].clone(), requires_grad=layer.weight.requires_grad)
            layer.nf = len(index)
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[index].clone(), requires_grad=layer.bias.requires_grad)


def keep_inputs(layer: nn.Module, index: torch.Tensor) -> None:
    """Keep only the input channels ``index`` (sorted) of ``layer``; its bias is untouched."""
    if not is_linear_like(layer):
        raise TypeError(f"structured pruning cuts nn.Linear or Conv1D layers, not {type(layer).__name__}")
    with torch.no_grad():
        if _is_linear(layer):
            layer.weight = nn.Parameter(layer.weight[:, index].clone(), requires_grad=layer.weight.requires_grad)
            layer.in_features = len(index)
        else:
            layer.weight = nn.Parameter(layer.weight[index].clone(), requires_grad=layer.weight.requires_grad)


def output_norms(layer: nn.Module) -> torch.Tensor:
    """L2 norm of each output channel's weights, as a float32 vector of length out_features."""
    return linear_weight(layer).float().norm(dim=1)


def input_norms(layer: nn.Module) -> torch.Tensor:
    """L2 norm of each input channel's weights, as a float32 vector of length in_features."""
    return linear_weight(layer).float().norm(dim=0)
