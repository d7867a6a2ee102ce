"""Cut KV groups, MLP channels and whole layers out of a model and write the new sizes into its config.

After these functions the model's config.json describes the smaller model exactly, so transformers'
own ``from_pretrained`` (and smashlib's skeleton loader) rebuild it with the pruned shapes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from smashlib.pruning.channels import keep_inputs, keep_outputs
from smashlib.pruning.families import Family, blocks_of, mlp_width_of, set_blocks, sub


def head_dim_of(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def keep_channels(model: nn.Module, family: Family, kept: Sequence[torch.Tensor]) -> None:
    """Keep MLP channels ``kept[i]`` (one index tensor per block, all the same length)."""
    for block, index in zip(blocks_of(model, family), kept):
        index = index.sort().values
        width = mlp_width_of(block, family)
        rows = torch.cat([index + part * width for part in range(family.mlp_in_parts)])  # [gate; up] halves
        for path in family.mlp_in:
            keep_outputs(sub(block, path), rows)
        keep_inputs(sub(block, family.mlp_out), index)
    setattr(model.config, family.mlp_width_field, len(kept[0]))


def keep_groups(model: nn.Module, family: Family, kept: Sequence[torch.Tensor]) -> None:
    """Keep KV groups ``kept[i]`` in block i: a group is one key/value head and the query heads reading it."""
    config = model.config
    head_dim = head_dim_of(model)
    per_group = config.num_attention_heads // config.num_key_value_heads
    for block, groups in zip(blocks_of(model, family), kept):
        groups = groups.sort().values
        kv_index = (groups[:, None] * head_dim + torch.arange(head_dim)).flatten()
        query_heads = (groups[:, None] * per_group + torch.arange(per_group)).flatten()
        q_index = (query_heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
        q, k, v, o = (sub(block, path) for path in family.attention)
        keep_outputs(q, q_index)
        keep_outputs(k, kv_index)
        keep_outputs(v, kv_index)
        keep_inputs(o, q_index)
    groups_left = len(kept[0])
    config.head_dim = head_dim  # explicit: hidden_size / heads no longer gives it
    config.num_key_value_heads = groups_left
    config.num_attention_heads = groups_left * per_group


def keep_layers(model: nn.Module, family: Family, kept: Sequence[int]) -> None:
    """Keep only the blocks at ``kept`` (original indices), renumbering their cache slots."""
    kept = sorted(kept)
    blocks = blocks_of(model, family)
    new = nn.ModuleList([blocks[i] for i in kept])
    for position, block in enumerate(new):
        for module in block.modules():
            if hasattr(module, "layer_idx"):  # the slot each attention uses in the KV cache
                module.layer_idx = position
    set_blocks(model, family, new)
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    computed = isinstance(getattr(type(config), "layer_types", None), property)  # Mamba's follows the layer count
    if isinstance(layer_types, list) and len(layer_types) == len(blocks) and not computed:
        config.layer_types = [layer_types[i] for i in kept]
    dense = getattr(config, "mlp_only_layers", None)  # Qwen-MoE: the indices of the blocks with a dense MLP
    if isinstance(dense, list):
        config.mlp_only_layers = [position for position, index in enumerate(kept) if index in dense]
    setattr(config, family.layers_field, len(kept))


def layer_removal_problem(config) -> str | None:
    """Why whole layers cannot be removed from a model with this config, or None. Some configs choose each
    block's kind by its index in a way a shorter list cannot keep (every n-th block sparse; the first k dense)."""
    step = getattr(config, "decoder_sparse_step", None)
    if isinstance(step, int) and step > 1:
        return (f"its config makes every {step}-th block a mixture of experts (decoder_sparse_step={step}), a rule "
                "that renumbered blocks would not follow")
    first_dense = getattr(config, "first_k_dense_replace", None)
    if isinstance(first_dense, int) and first_dense > 0:
        return (f"its config makes the first {first_dense} blocks dense (first_k_dense_replace={first_dense}), a "
                "rule that renumbered blocks would not follow")
    return None


def evenly_spaced(total: int, keep: int) -> list[int]:
    """``keep`` indices out of ``total``, evenly spread, always including the first and the last."""
    if keep >= total:
        return list(range(total))
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})
