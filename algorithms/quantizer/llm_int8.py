"""llm_int8: LLM.int8() (Dettmers et al., 2022) with bitsandbytes, on CPU and CUDA.

Every nn.Linear (and GPT-2 Conv1D) but the output head becomes a bitsandbytes Linear8bitLt: int8
weights with one scale per output row; activations are quantized per row at each call, except the
input columns holding a value above ``outlier_threshold``, which are multiplied in float16. That
mixed decomposition is what keeps large models' quality at int8; 0 turns it off (all int8).
On CPU the int8 matmul is torch._int_mm (AVX-512 only) and costs more than it saves: see
docs/bitsandbytes.md for measured speed.
"""
from __future__ import annotations

from ConfigSpace import Categorical, Float
from torch import nn

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError


class LlmInt8(Algorithm):
    name = "llm_int8"
    group = "quantizer"
    runs_on = ("cpu", "cuda")
    needs_packages = ("bitsandbytes>=0.45",)
    extra = "bnb"
    summary = "LLM.int8(): int8 weights, float16 outlier columns (bitsandbytes); CPU and CUDA."
    hyperparameters = (
        Float("outlier_threshold", (0.0, 100.0), default=6.0),
        Categorical("keep_output_head", [True, False], default=True),
    )

    def check_model(self, model: nn.Module) -> None:
        from smashlib.layers.linear_like import linear_like_names

        if not linear_like_names(model, keep_output_head=True):
            raise UnsupportedModelError(
                "llm_int8 quantizes nn.Linear and transformers Conv1D layers; this model has none besides its output head."
            )

    def apply(self, model, settings, components):
        from smashlib.layers.bnb_linear import Linear8bitLt
        from smashlib.layers.linear_like import linear_weight, swap_linear_like

        threshold = float(settings["outlier_threshold"])
        swap_linear_like(
            model, bool(settings["keep_output_head"]),
            lambda layer: Linear8bitLt.from_weight(linear_weight(layer), layer.bias, threshold=threshold),
        )
        return model

    def prepare_for_loading(self, model, settings):
        from smashlib.layers.bnb_linear import Linear8bitLt
        from smashlib.layers.linear_like import linear_sizes, swap_linear_like

        threshold = float(settings["outlier_threshold"])

        def shell(layer: nn.Module) -> Linear8bitLt:
            in_features, out_features, bias = linear_sizes(layer)
            bias_dtype = layer.bias.dtype if bias else layer.weight.dtype
            return Linear8bitLt(
                in_features, out_features, bias, threshold=threshold, bias_dtype=bias_dtype, device=layer.weight.device
            )

        swap_linear_like(model, bool(settings["keep_output_head"]), shell)
        return model
