"""How much each KV group, MLP channel and layer matters: from the weights alone, or measured on data.

"magnitude" needs no data: a channel's score is the L2 norm of every weight that belongs to it (its rows in
the up/gate projections and its column in the down projection), a KV group's the norm of its query, key,
value rows and output columns. "activation" runs calibration text and weighs each channel's output column
norm by how large its activation is on real inputs (the idea of Wanda and FLAP): a channel with big weights
that never fires is cheap to remove. Layer importance is always measured: 1 - cos(input, output) of each
block (ShortGPT's block influence), since a block that barely changes its input does little.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from smashlib.layers.linear_like import linear_weight
from smashlib.pruning.channels import input_norms, output_norms
from smashlib.pruning.families import Family, blocks_of, sub
from smashlib.time_limit import check_time_limit


@dataclass
class Scores:
    """Per block: one score per KV group (when heads are pruned) and per MLP channel; one score per block."""

    groups: list[torch.Tensor] = field(default_factory=list)
    channels: list[torch.Tensor] = field(default_factory=list)
    layers: torch.Tensor | None = None


def head_layout(block: nn.Module, family: Family, head_dim: int) -> tuple[int, int]:
    """(query heads, KV heads) of one block, read from its projections' sizes."""
    q, k, _, _ = (sub(block, path) for path in family.attention)
    return linear_weight(q).shape[0] // head_dim, linear_weight(k).shape[0] // head_dim


def group_magnitude(block: nn.Module, family: Family, head_dim: int) -> torch.Tensor:
    q, k, v, o = (sub(block, path) for path in family.attention)
    heads, kv_heads = head_layout(block, family, head_dim)
    per_group = heads // kv_heads
    q_rows = output_norms(q).pow(2).view(kv_heads, per_group * head_dim).sum(1)
    kv_rows = (output_norms(k).pow(2) + output_norms(v).pow(2)).view(kv_heads, head_dim).sum(1)
    o_cols = input_norms(o).pow(2).view(kv_heads, per_group * head_dim).sum(1)
    return (q_rows + kv_rows + o_cols).sqrt()


def channel_magnitude(block: nn.Module, family: Family) -> torch.Tensor:
    total = input_norms(sub(block, family.mlp_out)).pow(2)
    for path in family.mlp_in:  # a fused layer's parts ([gate; up]) each hold one row of every channel
        total = total + output_norms(sub(block, path)).pow(2).view(family.mlp_in_parts, -1).sum(0)
    return total.sqrt()


def magnitude_scores(model: nn.Module, family: Family, head_dim: int | None, heads: bool) -> Scores:
    scores = Scores()
    for block in blocks_of(model, family):
        scores.channels.append(channel_magnitude(block, family))
        if heads:
            scores.groups.append(group_magnitude(block, family, head_dim))
    return scores


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


class _Recorder:
    """Forward hooks summing what the scores need over every calibration token."""

    def __init__(self, model: nn.Module, family: Family, head_dim: int | None, heads: bool) -> None:
        self.blocks = list(blocks_of(model, family))
        self.channel_sums = [None] * len(self.blocks)
        self.head_sums = [None] * len(self.blocks)
        self.influence = torch.zeros(len(self.blocks))
        self.tokens = 0
        self.head_dim = head_dim
        self.handles = []
        for index, block in enumerate(self.blocks):
            if family.prunes_channels:
                self.handles.append(sub(block, family.mlp_out).register_forward_pre_hook(self._channels(index)))
            if heads:
                self.handles.append(sub(block, family.attention[3]).register_forward_pre_hook(self._heads(index)))
            self.handles.append(block.register_forward_hook(self._influence(index), with_kwargs=True))

    def _channels(self, index):
        def hook(module, args):
            x = args[0].detach().float().flatten(0, -2)
            total = x.abs().sum(0)
            self.channel_sums[index] = total if self.channel_sums[index] is None else self.channel_sums[index] + total
        return hook

    def _heads(self, index):
        def hook(module, args):
            x = args[0].detach().float().flatten(0, -2)
            norms = x.view(x.shape[0], -1, self.head_dim).norm(dim=-1).sum(0)  # one per query head
            self.head_sums[index] = norms if self.head_sums[index] is None else self.head_sums[index] + norms
        return hook

    def _influence(self, index):
        def hook(module, args, kwargs, output):
            inputs = _first_tensor(args) if args else kwargs.get("hidden_states")
            outputs = _first_tensor(output)
            if inputs is None or outputs is None:
                return
            cos = nn.functional.cosine_similarity(inputs.float().flatten(0, -2), outputs.float().flatten(0, -2), dim=-1)
            self.influence[index] += (1 - cos).sum().item()
            if index == 0:
                self.tokens += cos.numel()
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def activation_scores(
    model: nn.Module, family: Family, head_dim: int | None, heads: bool, batches: Iterable[dict[str, torch.Tensor]]
) -> Scores:
    """Scores measured on ``batches`` (dicts for ``model(**batch)``)."""
    recorder = _Recorder(model, family, head_dim, heads)
    try:
        for batch in batches:
            check_time_limit("torch_structured's importance on calibration data")
            model(**batch)
    finally:
        recorder.remove()
    tokens = max(recorder.tokens, 1)
    scores = Scores(layers=recorder.influence / tokens)
    for index, block in enumerate(recorder.blocks):
        if family.prunes_channels:
            down = input_norms(sub(block, family.mlp_out))
            scores.channels.append(recorder.channel_sums[index] / tokens * down)
        if heads:
            o = sub(block, family.attention[3])
            column = input_norms(o).pow(2).view(-1, head_dim).sum(1).sqrt()  # per query head
            per_head = recorder.head_sums[index] / tokens * column
            _, kv_heads = head_layout(block, family, head_dim)
            scores.groups.append(per_head.view(kv_heads, -1).sum(1))
    return scores
