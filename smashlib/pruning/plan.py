"""How many KV groups, MLP channels and layers to remove for a ``sparsity`` and a ``target``, then the cut.

``sparsity`` is the fraction of the *pruned parts'* parameters removed: of the attention and MLP weights for
"both", of the MLP's for "mlp", of the blocks' for "layers". KV groups are coarse (SmolLM2 has 3 per layer),
so for "both" the number of groups is rounded first and the MLP takes the rest of the budget, which keeps
the total on target. Kept MLP widths are rounded to a multiple of 8 (faster matrix products).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from smashlib.pruning import importance, surgery
from smashlib.pruning.families import Family, blocks_of, mlp_width

TARGETS = ("both", "mlp", "heads", "layers")
#: MLP widths are kept at a multiple of this (when at least this wide)
WIDTH_MULTIPLE = 8


@dataclass(frozen=True)
class Plan:
    groups_removed: int = 0
    channels_kept: int | None = None
    layers_removed: int = 0


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _round_width(width: int, full: int) -> int:
    if width >= WIDTH_MULTIPLE:
        width = _round_half_up(width / WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    return max(1, min(full, width))


def make_plan(model: nn.Module, family: Family, target: str, sparsity: float) -> Plan:
    blocks = blocks_of(model, family)
    if target == "layers":
        removed = min(len(blocks) - 1, _round_half_up(sparsity * len(blocks)))
        return Plan(layers_removed=removed)
    width = mlp_width(model, family)
    hidden = model.config.hidden_size
    per_channel = hidden * family.rows_per_channel
    groups_removed = 0
    budget = sparsity * width * per_channel
    if target in ("both", "heads"):
        config = model.config
        head_dim = surgery.head_dim_of(model)
        groups = config.num_key_value_heads
        per_group_heads = config.num_attention_heads // groups
        per_group = (2 * per_group_heads + 2) * head_dim * hidden  # q and o rows/columns, k and v rows
        groups_removed = min(groups - 1, _round_half_up(sparsity * groups))
        if target == "heads":
            return Plan(groups_removed=groups_removed)
        budget = sparsity * (groups * per_group + width * per_channel) - groups_removed * per_group
    channels_removed = max(0.0, budget / per_channel)
    return Plan(groups_removed=groups_removed, channels_kept=_round_width(round(width - channels_removed), width))


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    # stable: equal scores keep the lower index, so results do not depend on sort internals
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values


def apply_plan(
    model: nn.Module,
    family: Family,
    plan: Plan,
    importance_kind: str,
    batches: Iterable[dict[str, torch.Tensor]] | None,
) -> nn.Module:
    """Cut ``model`` in place according to ``plan``; ``batches`` are needed for activation or layer scores."""
    heads = plan.groups_removed > 0
    head_dim = surgery.head_dim_of(model) if family.prunes_heads else None
    if importance_kind == "activation" or plan.layers_removed:
        scores = importance.activation_scores(model, family, head_dim, heads, batches or [])
    else:
        scores = importance.magnitude_scores(model, family, head_dim, heads)
    if plan.layers_removed:
        total = len(blocks_of(model, family))
        kept = _top(scores.layers, total - plan.layers_removed)
        surgery.keep_layers(model, family, kept.tolist())
    if heads:
        groups = model.config.num_key_value_heads - plan.groups_removed
        surgery.keep_groups(model, family, [_top(s, groups) for s in scores.groups])
    if plan.channels_kept is not None and plan.channels_kept < mlp_width(model, family):
        surgery.keep_channels(model, family, [_top(s, plan.channels_kept) for s in scores.channels])
    return model
