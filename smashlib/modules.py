"""Questions about a model's structure that several algorithms ask."""
from __future__ import annotations

from torch import nn


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the modules producing the model's outputs (lm_head and the like), which quantizing or
    pruning hurts most; found through transformers' get_output_embeddings when the model has it."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return {name for name, _ in model.named_modules() if name.split(".")[-1] in {"lm_head", "proj_out"}}
    return {name for name, module in model.named_modules() if module is head}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted path) is: how quantizers swap layers."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
