"""Structured pruning: remove whole KV groups, MLP channels and layers, so the matrices really shrink.

Used by the ``torch_structured`` pruner and by the distiller (layer choice). See
:mod:`smashlib.pruning.families` for what each architecture allows and why.
"""
from smashlib.pruning.families import Family, blocks_of, find_family, supported_families
from smashlib.pruning.importance import activation_scores
from smashlib.pruning.plan import TARGETS, Plan, apply_plan, make_plan
from smashlib.pruning.surgery import evenly_spaced, keep_layers, layer_removal_problem

__all__ = [
    "TARGETS",
    "Family",
    "Plan",
    "activation_scores",
    "apply_plan",
    "blocks_of",
    "evenly_spaced",
    "find_family",
    "keep_layers",
    "layer_removal_problem",
    "make_plan",
    "supported_families",
]
