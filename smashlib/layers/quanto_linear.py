"""optimum-quanto's QLinear, made to run under ``torch.inference_mode``.

quanto 0.2.7's packed 2/4-bit weights (``WeightQBitsTensor``) fail inside inference mode ("Cannot set
version_counter for inference tensor": transposing the weight subclass creates an alias whose version
counter cannot be shared with an inference tensor). Leaving inference mode for the layer's own matmul,
with autograd still off, avoids it; the result is the same tensor values, and the rest of the model
stays in inference mode. The class is swapped on the instances quanto created (quanto builds QLinear
through its own registry, which we do not patch globally), and only for 2/4-bit weights: int8 and float8
weights run in inference mode as they are, and leaving it costs a torch.compile graph break per layer.
"""
from __future__ import annotations

import torch
from torch import nn


def _qlinear_class() -> type:
    from optimum.quanto.nn import QLinear  # lazy: optimum-quanto is an optional extra

    return QLinear


_SAFE_CLASS: type | None = None


def inference_safe_qlinear() -> type:
    """The QLinear subclass (built once) whose forward also works under torch.inference_mode."""
    global _SAFE_CLASS
    if _SAFE_CLASS is None:
        QLinear = _qlinear_class()

        class InferenceSafeQLinear(QLinear):
            def forward(self, input: torch.Tensor) -> torch.Tensor:
                if torch.is_inference_mode_enabled():
                    with torch.inference_mode(False), torch.no_grad():
                        return super().forward(input)
                return super().forward(input)

        _SAFE_CLASS = InferenceSafeQLinear
    return _SAFE_CLASS


def make_inference_safe(model: nn.Module) -> None:
    """Give every QLinear with 2/4-bit weights the inference-safe forward (state and hooks unchanged)."""
    QLinear, safe = _qlinear_class(), inference_safe_qlinear()
    for module in model.modules():
        if type(module) is QLinear and module.weight_qtype is not None and module.weight_qtype.bits < 8:
            module.__class__ = safe
