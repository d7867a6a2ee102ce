"""hqq: Half-Quadratic Quantization (Badri & Shaji, 2023) of Linear weights to 2, 3, 4 or 8 bits.

No calibration data: the ``hqq`` package's solver fits each group's zero point by minimising an
lp-norm (p < 1) of the weight error, which keeps outlier weights well represented, so plain
round-to-nearest quality is beaten without seeing any activations. Weights are stored bit-packed with
one scale and zero per group (smashlib.layers.hqq_linear). On CPU, 4-bit runs on PyTorch's int4 kernel
(bf16 activations); other widths dequantize at every call and are slower than fp32 (docs/hqq.md).
"""
from __future__ import annotations

from ConfigSpace import Categorical
from torch import nn

from smashlib.algorithm import Algorithm
from smashlib.errors import HyperparameterValueError, UnsupportedDeviceError, UnsupportedModelError
from smashlib.layers.hqq_linear import HQQPackedLinear, layer_supported, tinygemm_supported
from smashlib.layers.linear_like import linear_like_names, linear_sizes, linear_weight
from smashlib.modules import replace_module


def resolve_backend(settings: dict, device: str) -> str:
    """The kernel the layers run on: ``auto`` picks the int4 CPU kernel where it applies."""
    backend = settings["backend"]
    if backend != "auto":
        return backend
    usable = device == "cpu" and tinygemm_supported(
        int(settings["weight_bits"]), int(settings["axis"]), int(settings["group_size"])
    )
    return "int4_tinygemm" if usable else "dequantize"


def layer_settings(settings: dict) -> tuple[int, int, int]:
    return int(settings["weight_bits"]), int(settings["group_size"]), int(settings["axis"])


class HQQ(Algorithm):
    name = "hqq"
    group = "quantizer"
    runs_on = ("cpu", "cuda")
    needs_packages = ("hqq>=0.2.8",)
    extra = "hqq"
    summary = "Half-Quadratic Quantization to 2/3/4/8-bit groups, no calibration; 4-bit runs on the int4 CPU kernel."
    hyperparameters = (
        Categorical("weight_bits", [4, 8, 3, 2], default=4),
        Categorical("group_size", [32, 64, 128, 256], default=32),
        Categorical("axis", [1, 0], default=1),
        Categorical("backend", ["auto", "int4_tinygemm", "dequantize"], default="auto"),
        Categorical("keep_output_head", [True, False], default=True),
    )

    def check_settings(self, settings, device):
        if settings["backend"] != "int4_tinygemm":
            return
        if int(settings["weight_bits"]) != 4 or int(settings["axis"]) != 1:
            raise HyperparameterValueError(
                f"hqq_backend='int4_tinygemm' needs hqq_weight_bits=4 and hqq_axis=1 (got "
                f"{settings['weight_bits']} bits, axis {settings['axis']}): set hqq_backend='auto' or 'dequantize'."
            )
        if device != "cpu":
            raise UnsupportedDeviceError(
                "hqq_backend='int4_tinygemm' uses PyTorch's int4 CPU kernel; on 'cuda' use hqq_backend='dequantize'."
            )

    def targets(self, model: nn.Module, settings: dict) -> list[str]:
        """The linear-like layers hqq quantizes: all but the output head (by default) whose size packs."""
        bits, group_size, axis = layer_settings(settings)
        names = [
            name for name in linear_like_names(model, bool(settings["keep_output_head"]))
            if layer_supported(*linear_sizes(model.get_submodule(name))[:2], bits, group_size, axis)
        ]
        if not names:
            raise UnsupportedModelError(
                f"hqq found no nn.Linear or Conv1D layer whose weight divides into groups of {group_size}"
                f"{' besides the output head' if settings['keep_output_head'] else ''}: choose a smaller hqq_group_size."
            )
        return names

    def check_model(self, model):
        self.targets(model, {param.name: param.default_value for param in self.hyperparameters})

    def apply(self, model, settings, components):
        bits, group_size, axis = layer_settings(settings)
        backend = resolve_backend(settings, next(model.parameters()).device.type)
        names = self.targets(model, settings)
        for name in names:
            layer = model.get_submodule(name)
            replace_module(model, name, HQQPackedLinear.from_weight(
                linear_weight(layer), layer.bias, bits, group_size, axis, backend
            ))
        return model

    def prepare_for_loading(self, model, settings):
        bits, group_size, axis = layer_settings(settings)
        for name in self.targets(model, settings):
            layer = model.get_submodule(name)
            in_features, out_features, bias = linear_sizes(layer)
            replace_module(model, name, HQQPackedLinear(
                in_features, out_features, bias, bits, group_size, axis, device=layer.weight.device
            ))
        return model

    def after_loading(self, model, settings):
        backend = resolve_backend(settings, next(model.buffers()).device.type)
        for module in model.modules():
            if isinstance(module, HQQPackedLinear):
                module.backend = backend
                if backend == "int4_tinygemm":
                    module.pack_for_kernel()
        return model
