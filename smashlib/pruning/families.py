"""Where each supported architecture keeps its blocks, heads and MLP channels, and which config fields say so.

Structured pruning must leave a model that transformers rebuilds from its config.json alone, so each family
states which cuts its config can express:

- Llama-like models (Llama, Mistral, Qwen2/3, SmolLM2) have ``head_dim``, ``num_attention_heads``,
  ``num_key_value_heads`` and ``intermediate_size``: whole KV groups (one key/value head and the query heads
  sharing it) and MLP channels can go, with ``head_dim`` kept as it is.
- GPT-2 and BERT derive the head size from ``hidden_size / num_heads`` and have no field for it (transformers
  5 also dropped ``pruned_heads``), so a model with fewer heads could not be loaded back: their heads are
  kept, their MLP channels (``n_inner`` / ``intermediate_size``) and layers can go.

Every family can lose whole layers (``num_hidden_layers``). Widths stay uniform across layers: one config
field holds one number for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from smashlib.layers.linear_like import linear_sizes


@dataclass(frozen=True)
class Family:
    """One architecture family: module paths (relative to ``model.base_model``) and config field names."""

    name: str
    model_types: tuple[str, ...]
    blocks: str
    mlp_in: tuple[str, ...]  # layers whose output channels are the MLP's hidden channels
    mlp_out: str  # the layer reading them
    mlp_width_field: str
    layers_field: str
    #: (q, k, v, o) projections, when the config can express fewer heads; None otherwise
    attention: tuple[str, str, str, str] | None = None
    #: why heads cannot be removed, when they cannot
    no_heads_reason: str = ""

    @property
    def prunes_heads(self) -> bool:
        return self.attention is not None


LLAMA = Family(
    name="Llama-like (Llama, Mistral, Qwen2, Qwen3, SmolLM2)",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    blocks="layers",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
    mlp_width_field="intermediate_size",
    layers_field="num_hidden_layers",
    attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
)
GPT2 = Family(
    name="GPT-2",
    model_types=("gpt2",),
    blocks="h",
    mlp_in=("mlp.c_fc",),
    mlp_out="mlp.c_proj",
    mlp_width_field="n_inner",
    layers_field="n_layer",
    no_heads_reason="GPT-2's config has no head_dim (transformers computes n_embd / n_head), so fewer heads "
    "could not be loaded back",
)
BERT = Family(
    name="BERT",
    model_types=("bert",),
    blocks="encoder.layer",
    mlp_in=("intermediate.dense",),
    mlp_out="output.dense",
    mlp_width_field="intermediate_size",
    layers_field="num_hidden_layers",
    no_heads_reason="BERT's config has no head_dim (transformers computes hidden_size / num_attention_heads), "
    "so fewer heads could not be loaded back",
)
FAMILIES: tuple[Family, ...] = (LLAMA, GPT2, BERT)


def supported_families() -> str:
    return "; ".join(family.name for family in FAMILIES)


def _lookup(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_family(model: nn.Module) -> Family | None:
    """The family of ``model`` when its config's model_type is one we know and its modules are where expected."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    base = getattr(model, "base_model", None)
    for family in FAMILIES:
        if model_type not in family.model_types or base is None:
            continue
        blocks = _lookup(base, family.blocks)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and _lookup(blocks[0], family.mlp_out) is not None:
            return family
    return None


def blocks_of(model: nn.Module, family: Family) -> nn.ModuleList:
    return _lookup(model.base_model, family.blocks)


def set_blocks(model: nn.Module, family: Family, blocks: nn.ModuleList) -> None:
    parent_path, _, name = family.blocks.rpartition(".")
    parent = _lookup(model.base_model, parent_path) if parent_path else model.base_model
    setattr(parent, name, blocks)


def sub(block: nn.Module, path: str) -> nn.Module:
    return _lookup(block, path)


def mlp_width(model: nn.Module, family: Family) -> int:
    """The MLP's hidden width (the same in every block)."""
    in_features, _, _ = linear_sizes(sub(blocks_of(model, family)[0], family.mlp_out))
    return in_features
