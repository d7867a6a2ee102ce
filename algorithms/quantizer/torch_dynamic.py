"""torch_dynamic: int8 weights (per output channel) with activations quantized on the fly, on CPU.

Runs on PyTorch's fbgemm/x86 int8 kernel. Activation outlier channels are what costs quality: the
inputs of the MLP down projections (after the gated activation) and the output head carry them, so
by default those layers stay in full precision (see docs/torch_dynamic.md for the measured trade-off).
"""
from __future__ import annotations

import re

from ConfigSpace import Categorical
from torch import nn

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError
from smashlib.layers.int8_linear import Int8DynamicLinear
from smashlib.modules import output_head_names

#: Which Linear layers stay in full precision: preset name -> regex on the module's name (plus the head).
KEEP_PRESETS: dict[str, tuple[bool, str | None]] = {
    "none": (False, None),
    "output_head": (True, None),
    "outlier_layers": (True, r"(^|\.)(down_proj|fc2|c_proj|wo|output\.dense)$"),
}


def linears_to_quantize(model: nn.Module, keep: str) -> list[str]:
    keep_head, pattern = KEEP_PRESETS[keep]
    skip = output_head_names(model) if keep_head else set()
    regex = re.compile(pattern) if pattern else None
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name not in skip and not (regex and regex.search(name))
    ]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


class TorchDynamic(Algorithm):
    name = "torch_dynamic"
    group = "quantizer"
    runs_on = ("cpu",)
    summary = "int8 weights per channel, int8 activations per call (fbgemm); CPU."
    hyperparameters = (
        Categorical("keep_full_precision", list(KEEP_PRESETS), default="outlier_layers"),
    )

    def check_model(self, model: nn.Module) -> None:
        if not any(type(m) is nn.Linear for m in model.modules()):
            raise UnsupportedModelError("torch_dynamic quantizes nn.Linear layers; this model has none.")

    def apply(self, model, settings, components):
        for name in linears_to_quantize(model, settings["keep_full_precision"]):
            replace_module(model, name, Int8DynamicLinear.from_linear(model.get_submodule(name)))
        return model

    def prepare_for_loading(self, model, settings):
        for name in linears_to_quantize(model, settings["keep_full_precision"]):
            linear = model.get_submodule(name)
            replace_module(model, name, Int8DynamicLinear(linear.in_features, linear.out_features, linear.bias is not None))
        return model
