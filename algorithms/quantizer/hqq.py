"""hqq: Half-Quadratic Quantization (Badri & Shaji, 2023) of Linear weights to 2, 3, 4 or 8 bits.

No calibration data: the ``hqq`` package's solver fits each group's zero point by minimising an
lp-norm (p < 1) of the weight error, which keeps outlier weights well represented, so plain
round-to-nearest quality is beaten without seeing any activations. Weights are stored bit-packed with
one scale and zero per group (smashlib.layers.hqq_linear). On CPU, 4-bit runs on PyTorch's int4 kernel
(bf16 activations); other widths dequantize at every call and are slower than fp32 (docs/hqq.md).
"""
from __future__ import annotations

import logging

from ConfigSpace import Categorical
from torch import nn

from smashlib.errors import HyperparameterValueError, UnsupportedDeviceError
from smashlib.layers.hqq_linear import HQQPackedLinear, layer_supported, tinygemm_layer_supported, tinygemm_supported
from smashlib.layers.linear_like import linear_sizes, linear_weight
from smashlib.module_swap import ModuleSwapQuantizer
from smashlib.targets import target_modules_hyperparameter

logger = logging.getLogger(__name__)


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


class HQQ(ModuleSwapQuantizer):
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
        target_modules_hyperparameter("all_but_output_head"),
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

    def target_names(self, model: nn.Module, settings: dict) -> list[str]:
        """The selected layers whose size hqq can pack (whole groups, whole bytes of codes); with
        ``backend='int4_tinygemm'`` also only those the int4 kernel takes. Layers left out stay as they
        are (smash() logs which): a BERT classifier's 2-output head does not stop the rest."""
        bits, group_size, axis = layer_settings(settings)
        explicit_kernel = settings["backend"] == "int4_tinygemm"
        names, skipped = [], []
        for name in super().target_names(model, settings):
            in_features, out_features, _ = linear_sizes(model.get_submodule(name))
            fits = layer_supported(in_features, out_features, bits, group_size, axis) and (
                not explicit_kernel or tinygemm_layer_supported(in_features, out_features, group_size)
            )
            (names if fits else skipped).append(name)
        if skipped and names:
            logger.info("hqq leaves %d layer(s) in full precision (their shapes do not pack): %s", len(skipped),
                        ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
        return names

    def describe_unsupported(self, settings):
        return (f"no selected layer's weight divides into groups of {settings['group_size']}"
                f"{' the int4 kernel takes' if settings['backend'] == 'int4_tinygemm' else ''}: "
                "choose a smaller hqq_group_size.")

    def make_quantized(self, layer, settings):
        bits, group_size, axis = layer_settings(settings)
        backend = resolve_backend(settings, layer.weight.device.type)
        return HQQPackedLinear.from_weight(linear_weight(layer), layer.bias, bits, group_size, axis, backend)

    def make_empty(self, layer, settings):
        bits, group_size, axis = layer_settings(settings)
        in_features, out_features, bias = linear_sizes(layer)
        return HQQPackedLinear(in_features, out_features, bias, bits, group_size, axis, device=layer.weight.device)

    def after_loading(self, model, settings):
        backend = resolve_backend(settings, next(model.buffers()).device.type)
        for module in model.modules():
            if isinstance(module, HQQPackedLinear):
                module.backend = backend
                if backend == "int4_tinygemm":
                    module.pack_for_kernel()
        return model
