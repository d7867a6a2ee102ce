"""torch_unstructured: zero a fraction of each Linear weight (magnitude or random), made permanent.

Only Linear weights are pruned (nn.Linear and transformers' Conv1D, GPT-2's linear layers, by exact
type: a quantized subclass is never pruned), those ``target_modules`` selects (by default all but the
output head): norms, embeddings and biases carry little of the parameter count and much of the
quality. A layer whose weight is the input embedding matrix (a tied output head) is never pruned,
whatever ``target_modules`` says, since pruning it would prune the embeddings. Each layer loses exactly
``sparsity`` of its weights (rounded), the smallest in magnitude or chosen at random. The zeros are
written into the weight (no mask or reparametrisation is left behind), so the model saves and loads
like any other; use it before a quantizer or a sparse kernel to turn zeros into speed.
"""
from __future__ import annotations

import torch
from ConfigSpace import Categorical, Float
from torch import nn
from torch.nn.utils import prune

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError
from smashlib.module_swap import upgrade_keep_settings
from smashlib.targets import resolve_targets, target_modules_hyperparameter, tied_embeddings


def prunable_linears(model: nn.Module, target_modules="all_but_output_head") -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Linear the pruner may touch: those ``target_modules`` selects, never a layer
    whose weight is also an embedding's."""
    names = resolve_targets(model, target_modules)
    tied = tied_embeddings(model, names)
    return [(name, model.get_submodule(name)) for name in names if not tied[name]]


class TorchUnstructured(Algorithm):
    name = "torch_unstructured"
    group = "pruner"
    summary = "Zero the smallest (or random) fraction of every Linear weight, permanently."
    hyperparameters = (
        Float("sparsity", (0.0, 0.99), default=0.1),
        Categorical("method", ["magnitude", "random"], default="magnitude"),
        target_modules_hyperparameter("all_but_output_head"),
    )

    @classmethod
    def upgrade_settings(cls, settings, schema_version):
        return upgrade_keep_settings(settings, schema_version)

    def target_names(self, model, settings):
        return [name for name, _ in prunable_linears(model, settings["target_modules"])]

    def describe_unsupported(self, settings):
        return "the only selected layers share their weight with the input embeddings (a tied output head)."

    def check_model(self, model: nn.Module) -> None:
        if not prunable_linears(model):
            raise UnsupportedModelError(
                "torch_unstructured prunes nn.Linear (and transformers Conv1D) weights; this model has none "
                "besides its output head."
            )

    def apply(self, model, settings, components):
        method = prune.l1_unstructured if settings["method"] == "magnitude" else prune.random_unstructured
        for _, linear in prunable_linears(model, settings["target_modules"]):
            with torch.no_grad():
                method(linear, name="weight", amount=settings["sparsity"])
                prune.remove(linear, "weight")  # bake the mask into the weight: no hooks, plain state dict
        return model
