"""Where each quantized layer goes in a checkpoint that transformers' own loader reads.

transformers 5 loads some checkpoints through a conversion mapping (``transformers.conversion_mapping``):
a MoE block's per-expert linears (Mixtral's ``block_sparse_moe.experts.3.w1`` / ``w3`` / ``w2``, Qwen-MoE's
``mlp.experts.3.gate_proj`` / ``up_proj`` / ``down_proj``) are merged into the fused 3-D ``experts.gate_up_proj``
and ``experts.down_proj`` while loading, and ``save_pretrained`` reverts that
(``transformers.core_model_loading.revert_weight_conversion``). Quantized experts can only be written in that
per-expert layout (a compressed-tensors checkpoint quantizes linear layers), and smashlib's split experts
(smashlib.layers.expert_linears) hold one ``gate_up_proj.<expert>`` layer where the checkpoint has a gate
and an up projection.

Rather than a table per architecture, :func:`checkpoint_rows` asks transformers' own reverse conversion:
each layer's rows are tagged with their numbers (a [rows, 1] tensor, so nothing of the size of the weights
is built), the tags are put where the model's fused tensors would be, reverted, and read back: each
checkpoint weight says which layer's rows it holds. A conversion that does not end in per-row linear
weights (GPT-OSS stores its experts fused in the checkpoint too) is refused by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from smashlib.errors import UnsupportedExportError
from smashlib.layers.expert_linears import SPLIT_MARK


@dataclass(frozen=True)
class CheckpointRows:
    """Rows ``start:stop`` of a smashlib layer, stored in the checkpoint as the linear layer ``name``
    (``expert``: one of a MoE block's, which transformers merges into fused weights when loading)."""

    name: str
    start: int
    stop: int
    expert: bool = False


def _split_projections(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Fused parameter name (as transformers names it) -> (its experts module, the projection)."""
    fused = {}
    for name, module in model.named_modules():
        if getattr(type(module), SPLIT_MARK, False):
            for projection, layers in module.named_children():
                if isinstance(layers, nn.ModuleList):
                    fused[f"{name}.{projection}"] = (module, projection)
    return fused


def checkpoint_rows(model: nn.Module, layer_names: list[str]) -> dict[str, list[CheckpointRows]]:
    """For each of ``layer_names`` (full names of linear-like layers of ``model``), the checkpoint linear
    layers holding its rows, as transformers' ``save_pretrained`` would name and cut them."""
    from transformers.core_model_loading import revert_weight_conversion

    row_counts = {name: int(model.get_submodule(name).out_features) for name in layer_names}
    offsets, total = {}, 0
    for name, rows in row_counts.items():
        offsets[name] = total
        total += rows
    tag = {name: torch.arange(offsets[name], offsets[name] + rows, dtype=torch.float64)[:, None] for name, rows in row_counts.items()}

    tagged: dict[str, torch.Tensor] = {}
    fused = _split_projections(model)
    in_fused = {}
    for fused_name, (module, projection) in fused.items():
        experts = [f"{fused_name}.{index}" for index in range(len(getattr(module, projection)))]
        quantized = sum(name in tag for name in experts)
        if quantized == 0:
            continue  # all float: written fused by float_expert_tensors, as the model names it
        if quantized < len(experts):
            raise UnsupportedExportError(
                f"{fused_name}: {quantized} of its {len(experts)} experts are quantized. transformers loads a MoE "
                "block's experts all quantized or all not: include all of them in target_modules, or none."
            )
        stacked = torch.stack([tag[name] for name in experts])  # [experts, rows, 1], as nn.Linear lays out
        tagged[fused_name] = stacked.transpose(1, 2) if module.is_transposed else stacked
        in_fused.update({name: fused_name for name in experts})
    tagged.update({f"{name}.weight": tag[name] for name in layer_names if name not in in_fused})

    owner_of_row = torch.empty(total, dtype=torch.long)
    for index, name in enumerate(layer_names):
        owner_of_row[offsets[name]: offsets[name] + row_counts[name]] = index
    placed: dict[str, list[CheckpointRows]] = {name: [] for name in layer_names}
    for key, value in revert_weight_conversion(model, tagged).items():
        if not key.endswith(".weight") or value.dim() != 2 or value.shape[1] != 1:
            source = next((n for n, f in in_fused.items() if key.startswith(f)), key)
            raise UnsupportedExportError(
                f"{source}: transformers writes this model's checkpoint with {key} of shape {tuple(value.shape)} "
                "(fused experts), not as linear layers, which is all a compressed-tensors checkpoint can quantize."
            )
        rows = value[:, 0].long()
        owner = layer_names[int(owner_of_row[rows[0]])]
        start = int(rows[0]) - offsets[owner]
        if not torch.equal(rows, torch.arange(int(rows[0]), int(rows[0]) + len(rows))) or owner_of_row[rows[-1]] != owner_of_row[rows[0]]:
            raise UnsupportedExportError(f"{key}: transformers' checkpoint interleaves the rows of {owner}, which cannot be cut per row.")
        placed[owner].append(CheckpointRows(key[: -len(".weight")], start, start + len(rows), owner in in_fused))
    return placed


def float_expert_tensors(model: nn.Module, layer_names: list[str]) -> dict[str, torch.Tensor]:
    """The split expert projections none of whose layers is in ``layer_names`` (left in float), put back in
    the fused weights (and biases) transformers' model holds, under the model's names."""
    tensors = {}
    quantized = set(layer_names)
    for fused_name, (module, projection) in _split_projections(model).items():
        layers = getattr(module, projection)
        if any(f"{fused_name}.{index}" in quantized for index in range(len(layers))):
            continue
        weight = torch.stack([layer.weight.detach() for layer in layers])
        tensors[fused_name] = weight.transpose(1, 2) if module.is_transposed else weight
        if layers[0].bias is not None:
            tensors[f"{fused_name}_bias"] = torch.stack([layer.bias.detach() for layer in layers])
    return tensors
