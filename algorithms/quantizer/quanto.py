"""quanto: optimum-quanto weights (int8, int4, int2, float8) with optional static int8 activations.

Weights are quantized per output channel (int8, float8) or in groups with a zero point (int4, int2,
quanto's group size of up to 128). With ``activations='qint8'`` every quantized Linear also quantizes
its input and output with per-tensor scales learned from calibration data (quanto's ``Calibration``
context), so the model needs the attached data and tokenizer; SmoothQuant can first move activation
outliers into the weights. Quantized weights are saved as their plain inner tensors (quanto's own
state-dict format: ``weight._data``, ``weight._scale``, ...), so loading needs no calibration.

On a CPU with an fp32 model quanto dequantizes the weights at each call: smaller, not faster
(docs/quanto.md has the measured numbers).
"""
from __future__ import annotations

from ConfigSpace import Categorical, Float, Integer
from torch import nn

from smashlib.errors import HyperparameterValueError, UnsupportedModelError
from smashlib.layers.quanto_linear import make_inference_safe
from smashlib.module_swap import NnLinearQuantizer
from smashlib.targets import target_modules_hyperparameter
from smashlib.time_limit import check_time_limit

WEIGHT_TYPES = ("qint8", "qint4", "qint2", "qfloat8")
ACTIVATION_TYPES = ("none", "qint8")




def quanto_quantize(model: nn.Module, settings: dict, names: list[str]) -> None:
    """Swap ``names`` for quanto's QLinear (float weights still, activations not yet calibrated).

    Only the inputs of a Linear need quantizing for its int8 matmul. quanto also quantizes outputs,
    which helps only when the next op consumes int8, never the case here (a Linear's output goes to an
    activation, attention or a residual add); its calibration would switch most of them off anyway, but
    by tracing a forward pass, so a reloaded model could not know which. Off for all, at smash and at load.
    """
    from optimum.quanto import quantize

    activations = None if settings["activations"] == "none" else settings["activations"]
    quantize(model, weights=settings["weights"], activations=activations, include=names)
    make_inference_safe(model)
    if activations is not None:
        for name in names:
            model.get_submodule(name).disable_output_quantization()


class Quanto(NnLinearQuantizer):
    name = "quanto"
    group = "quantizer"
    runs_on = ("cpu", "cuda")
    needs_packages = ("optimum-quanto>=0.2.7",)
    extra = "quanto"
    summary = "optimum-quanto int8/int4/int2/float8 weights, optional calibrated int8 activations (+SmoothQuant)."
    hyperparameters = (
        Categorical("weights", list(WEIGHT_TYPES), default="qint8"),
        Categorical("activations", list(ACTIVATION_TYPES), default="none"),
        Categorical("smoothquant", [False, True], default=False),
        Float("smoothquant_alpha", (0.0, 1.0), default=0.5),
        Integer("calibration_samples", (1, 1024), default=32, log=True),
        target_modules_hyperparameter("all_but_output_head"),
    )

    def required_components(self, settings: dict) -> tuple[str, ...]:
        """Calibrated activations need text to calibrate on; weight-only quantization needs nothing."""
        return ("tokenizer", "data") if settings["activations"] != "none" else ()

    def check_settings(self, settings, device):
        if settings["smoothquant"] and settings["activations"] == "none":
            raise HyperparameterValueError(
                "quanto_smoothquant=True moves activation outliers into the weights, which only helps when "
                "activations are quantized: set quanto_activations='qint8' or quanto_smoothquant=False."
            )

    def check_model(self, model):
        if not self.target_names(model, {"target_modules": "all_but_output_head"}):
            raise UnsupportedModelError(
                "quanto quantizes nn.Linear layers (not transformers' Conv1D, as in GPT-2); this model has none "
                "besides its output head: try hqq or torch_dynamic."
            )

    def apply(self, model, settings, components):
        from smashlib.data.activation_calibration import calibration_inputs, check_components, smooth_before_quantizing

        needed = self.required_components(settings)
        check_components(self.name, needed, components, f"activations='{settings['activations']}'")
        batches = calibration_inputs(model, components, int(settings["calibration_samples"])) if needed else []
        names = self.target_names(model, settings)
        if settings["smoothquant"]:
            smooth_before_quantizing(model, batches, names, float(settings["smoothquant_alpha"]))
        quanto_quantize(model, settings, names)
        if batches:
            import torch
            from optimum.quanto import Calibration

            with torch.no_grad(), Calibration(streamline=False):
                for batch in batches:
                    check_time_limit("quanto's calibration")
                    model(**batch)
        from optimum.quanto import freeze

        freeze(model)
        return model

    def prepare_for_loading(self, model, settings):
        from optimum.quanto import freeze

        quanto_quantize(model, settings, self.target_names(model, settings))
        freeze(model)  # on the meta skeleton: gives the saved state dict's layout, computes nothing
        return model
