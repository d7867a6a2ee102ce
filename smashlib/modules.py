"""Questions about a model's structure that several algorithms ask."""
from __future__ import annotations

import re

from torch import nn

from smashlib.layers.int8_linear import is_linear

#: Linears reading activations with outlier channels: the MLP down projections (Llama's down_proj,
#: OPT/Whisper's fc2, T5's wo, BERT's FFN output.dense).
OUTLIER_LAYERS = r"(^|\.)(down_proj|fc2|wo|dense_4h_to_h)$|(^|\.)mlp\.c_proj$|(^|\.)layer\.\d+\.output\.dense$"

#: keep_full_precision preset -> (keep the output head, regex of the other Linears kept in full precision).
KEEP_PRESETS: dict[str, tuple[bool, str | None]] = {
    "none": (False, None),
    "output_head": (True, None),
    "outlier_layers": (False, OUTLIER_LAYERS),
    "outlier_layers_and_output_head": (True, OUTLIER_LAYERS),
}


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


def linears_to_quantize(model: nn.Module, keep: str) -> list[str]:
    """Names of the Linear layers (nn.Linear, transformers' Conv1D) the ``keep`` preset quantizes."""
    keep_head, pattern = KEEP_PRESETS[keep]
    skip = output_head_names(model) if keep_head else set()
    regex = re.compile(pattern) if pattern else None
    return [
        name
        for name, module in model.named_modules()
        if is_linear(module) and name not in skip and not (regex and regex.search(name))
    ]
