"""torchao: PyTorch's own quantization library (``torchao.quantization.quantize_``) on Linear weights.

Quantized weights are torchao tensor subclasses (``Int8Tensor``, ``Float8Tensor``, ...) that stay
``nn.Parameter``s of the original ``nn.Linear`` modules, so the model keeps its structure and
torch.compile sees through them (torchao is built for it). They are saved as their plain inner tensors
(smashlib.layers.flat_subclass_state), int8/float8 on disk.

On CPU, torchao's int8/float8 matmuls dequantize the weight and run a float matmul (or torch._int_mm):
slower than the fp32 model in eager mode; see docs/torchao.md for the measured numbers, and pick
``torch_dynamic`` for CPU speed. int4 weight-only and float8 dynamic activations need CUDA kernels.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from ConfigSpace import Categorical, Float, Integer
from torch import nn

from smashlib.errors import HyperparameterValueError, UnsupportedDeviceError, UnsupportedModelError
from smashlib.layers.flat_subclass_state import keep_state_flat
from smashlib.module_swap import NnLinearQuantizer
from smashlib.targets import as_plain_linears, target_modules_hyperparameter

#: quant_type -> (devices it runs on, what it does)
QUANT_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "int8wo": (("cpu", "cuda"), "int8 weights per output channel, float activations"),
    "int8dq": (("cpu", "cuda"), "int8 weights per channel, int8 activations per token, quantized per call"),
    "fp8wo": (("cpu", "cuda"), "float8 (e4m3) weights per output channel, float activations"),
    "int4wo": (("cuda",), "int4 weights in groups (tinygemm kernel, bfloat16 model)"),
    "fp8dq": (("cuda",), "float8 weights and float8 activations per row (torch._scaled_mm, SM89+)"),
}




def import_torchao():
    """Import torchao without its warnings about CUDA-only extensions it cannot load on a CPU machine."""
    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torchao import quantization
    finally:
        logger.setLevel(level)
    return quantization


def torchao_config(quant_type: str, group_size: int) -> Any:
    """The torchao config object for a quant_type. set_inductor_config=False: torchao would otherwise
    change torch._inductor's global settings for the whole process as a side effect of quantizing."""
    q = import_torchao()
    if quant_type == "int8wo":
        return q.Int8WeightOnlyConfig(set_inductor_config=False)
    if quant_type == "int8dq":
        return q.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    if quant_type == "fp8wo":
        return q.Float8WeightOnlyConfig(set_inductor_config=False)
    if quant_type == "fp8dq":
        return q.Float8DynamicActivationFloat8WeightConfig(granularity=q.PerRow(), set_inductor_config=False)
    if quant_type == "int4wo":
        from torchao.quantization.quantize_.workflows import Int4PackingFormat

        return q.Int4WeightOnlyConfig(
            group_size=group_size, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D, set_inductor_config=False
        )
    raise ValueError(f"unknown torchao quant_type {quant_type!r}: one of {', '.join(QUANT_TYPES)}")


class TorchAO(NnLinearQuantizer):
    name = "torchao"
    group = "quantizer"
    runs_on = ("cpu", "cuda")
    needs_packages = ("torchao>=0.18",)
    extra = "torchao"
    summary = "torchao quantize_: int8 weight-only, int8 dynamic, fp8 weight-only; int4/fp8-dynamic on CUDA."
    hyperparameters = (
        Categorical("quant_type", list(QUANT_TYPES), default="int8wo"),
        Categorical("group_size", [128, 32, 64, 256], default=128),  # int4wo only
        target_modules_hyperparameter("all_but_output_head"),
        Categorical("smoothquant", [False, True], default=False),  # int8dq only
        Float("smoothquant_alpha", (0.0, 1.0), default=0.5),
        Integer("calibration_samples", (1, 1024), default=32, log=True),
    )

    def required_components(self, settings: dict) -> tuple[str, ...]:
        """SmoothQuant needs text to measure activations on; every other setting needs nothing."""
        return ("tokenizer", "data") if settings["smoothquant"] else ()

    def check_settings(self, settings, device):
        if settings["smoothquant"] and settings["quant_type"] != "int8dq":
            raise HyperparameterValueError(
                f"torchao_smoothquant=True moves activation outliers into the weights, which only helps when "
                f"activations are quantized: use torchao_quant_type='int8dq' (not '{settings['quant_type']}') "
                "or torchao_smoothquant=False."
            )
        devices, what = QUANT_TYPES[settings["quant_type"]]
        if device not in devices:
            raise UnsupportedDeviceError(
                f"torchao_quant_type='{settings['quant_type']}' ({what}) needs {' or '.join(d.upper() for d in devices)}, "
                f"not '{device}': on CPU choose one of "
                f"{', '.join(name for name, (d, _) in QUANT_TYPES.items() if device in d)}."
            )

    def check_model(self, model):
        if not self.target_names(model, {"target_modules": "all_but_output_head"}):
            raise UnsupportedModelError(
                "torchao quantizes nn.Linear layers (not transformers' Conv1D, as in GPT-2); this model has none "
                "besides its output head: try hqq or torch_dynamic."
            )

    def check_targets(self, model, settings):
        super().check_targets(model, settings)
        self._check_dtype(model, settings, self.target_names(model, settings))

    @staticmethod
    def _check_dtype(model: nn.Module, settings: dict, names) -> None:
        if settings["quant_type"] == "int4wo" and any(
            model.get_submodule(name).weight.dtype != torch.bfloat16 for name in names
        ):
            raise UnsupportedModelError(
                "torchao_quant_type='int4wo' runs on the bfloat16 tinygemm kernel: load the model with "
                "dtype=torch.bfloat16."
            )

    def _quantize(self, model: nn.Module, settings: dict) -> nn.Module:
        names = set(self.target_names(model, settings))
        self._check_dtype(model, settings, names)
        q = import_torchao()
        as_plain_linears(model, names)  # torchao's weights implement F.linear, not FalconLinear's x @ W.T
        q.quantize_(
            model, torchao_config(settings["quant_type"], int(settings["group_size"])),
            filter_fn=lambda module, fqn: fqn in names,
        )
        for name in names:
            keep_state_flat(model.get_submodule(name))
        return model

    def apply(self, model, settings, components):
        from smashlib.data.activation_calibration import calibration_inputs, check_components, smooth_before_quantizing

        if settings["smoothquant"]:
            check_components(self.name, self.required_components(settings), components, "smoothquant=True")
            batches = calibration_inputs(model, components, int(settings["calibration_samples"]))
            names = self.target_names(model, settings)
            smooth_before_quantizing(model, batches, names, float(settings["smoothquant_alpha"]))
        return self._quantize(model, settings)

    def prepare_for_loading(self, model, settings):
        # Quantizing the weightless (meta) skeleton gives each weight its subclass and attributes; the
        # saved inner tensors then replace the meta ones (smashlib.layers.flat_subclass_state).
        return self._quantize(model, settings)
