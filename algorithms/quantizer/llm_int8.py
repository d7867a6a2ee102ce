"""llm_int8: LLM.int8() (Dettmers et al., 2022) with bitsandbytes, on CPU and CUDA.

Every nn.Linear (and GPT-2 Conv1D) that ``target_modules`` selects (by default all but the output head) becomes a bitsandbytes Linear8bitLt: int8
weights with one scale per output row; activations are quantized per row at each call, except the
input columns holding a value above ``outlier_threshold``, which are multiplied in float16. That
mixed decomposition is what keeps large models' quality at int8; 0 turns it off (all int8).
On CPU the int8 matmul is torch._int_mm (AVX-512 only) and costs more than it saves: see
docs/bitsandbytes.md for measured speed.
"""
from __future__ import annotations

from ConfigSpace import Float
from torch import nn

from smashlib.module_swap import ModuleSwapQuantizer
from smashlib.targets import target_modules_hyperparameter


class LlmInt8(ModuleSwapQuantizer):
    name = "llm_int8"
    group = "quantizer"
    runs_on = ("cpu", "cuda")
    needs_packages = ("bitsandbytes>=0.45",)
    extra = "bnb"
    summary = "LLM.int8(): int8 weights, float16 outlier columns (bitsandbytes); CPU and CUDA."
    hyperparameters = (
        Float("outlier_threshold", (0.0, 100.0), default=6.0),
        target_modules_hyperparameter("all_but_output_head"),
    )

    def make_quantized(self, layer: nn.Module, settings: dict) -> nn.Module:
        from smashlib.layers.bnb_linear import Linear8bitLt
        from smashlib.layers.linear_like import linear_weight

        return Linear8bitLt.from_weight(linear_weight(layer), layer.bias, threshold=float(settings["outlier_threshold"]))

    def make_empty(self, layer: nn.Module, settings: dict) -> nn.Module:
        from smashlib.layers.bnb_linear import Linear8bitLt
        from smashlib.layers.linear_like import linear_sizes

        in_features, out_features, bias = linear_sizes(layer)
        bias_dtype = layer.bias.dtype if bias else layer.weight.dtype
        return Linear8bitLt(
            in_features, out_features, bias, threshold=float(settings["outlier_threshold"]), bias_dtype=bias_dtype,
            device=layer.weight.device,
        )
