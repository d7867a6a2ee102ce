"""torch_unstructured: zero a fraction of each Linear weight (magnitude or random), made permanent.

Only Linear weights are pruned (nn.Linear and transformers' Conv1D, GPT-2's linear layers): norms,
embeddings and biases carry little of the parameter count and much of the quality. An output head
whose weight is the input embedding matrix (tied) is never pruned, whatever ``keep_output_head`` says,
since pruning it would prune the embeddings. Each layer loses exactly ``sparsity`` of its weights
(rounded), the smallest in magnitude or chosen at random. The zeros are written into the weight (no
mask or reparametrisation is left behind), so the model saves and loads like any other; use it before
a quantizer or a sparse kernel to turn zeros into speed.
"""
from __future__ import annotations

import torch
from ConfigSpace import Categorical, Float
from torch import nn
from torch.nn.utils import prune

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError
from smashlib.layers.int8_linear import is_linear
from smashlib.modules import output_head_names


def _embedding_weights(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def prunable_linears(model: nn.Module, keep_output_head: bool = True) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Linear the pruner may touch: not the output head when it is kept, never a
    layer whose weight is also an embedding's."""
    skip = output_head_names(model) if keep_output_head else set()
    embeddings = _embedding_weights(model)
    return [
        (name, m)
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or is_linear(m)) and name not in skip and id(m.weight) not in embeddings
    ]


class TorchUnstructured(Algorithm):
    name = "torch_unstructured"
    group = "pruner"
    summary = "Zero the smallest (or random) fraction of every Linear weight, permanently."
    hyperparameters = (
        Float("sparsity", (0.0, 0.99), default=0.1),
        Categorical("method", ["magnitude", "random"], default="magnitude"),
        Categorical("keep_output_head", [True, False], default=True),
    )

    def check_model(self, model: nn.Module) -> None:
        if not prunable_linears(model):
            raise UnsupportedModelError(
                "torch_unstructured prunes nn.Linear (and transformers Conv1D) weights; this model has none "
                "besides its output head."
            )

    def apply(self, model, settings, components):
        method = prune.l1_unstructured if settings["method"] == "magnitude" else prune.random_unstructured
        for _, linear in prunable_linears(model, settings["keep_output_head"]):
            with torch.no_grad():
                method(linear, name="weight", amount=settings["sparsity"])
                prune.remove(linear, "weight")  # bake the mask into the weight: no hooks, plain state dict
        return model
