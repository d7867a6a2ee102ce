"""torch_unstructured: zero a fraction of each Linear weight (magnitude or random), made permanent.

Only Linear weights are pruned: norms, embeddings and biases carry little of the parameter count and
much of the quality. The zeros are written into the weight (no mask or reparametrisation is left
behind), so the model saves and loads like any other; use it before a quantizer or a sparse kernel to
turn zeros into speed.
"""
from __future__ import annotations

import torch
from ConfigSpace import Categorical, Float
from torch import nn
from torch.nn.utils import prune

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError
from smashlib.modules import output_head_names


def prunable_linears(model: nn.Module, keep_output_head: bool = True) -> list[tuple[str, nn.Linear]]:
    skip = output_head_names(model) if keep_output_head else set()
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skip]


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
            raise UnsupportedModelError("torch_unstructured prunes nn.Linear weights; this model has none.")

    def apply(self, model, settings, components):
        method = prune.l1_unstructured if settings["method"] == "magnitude" else prune.random_unstructured
        for _, linear in prunable_linears(model, settings["keep_output_head"]):
            with torch.no_grad():
                method(linear, name="weight", amount=settings["sparsity"])
                prune.remove(linear, "weight")  # bake the mask into the weight: no hooks, plain state dict
        return model
