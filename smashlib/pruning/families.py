"""Where each supported architecture keeps its blocks, heads and MLP channels, and which config fields say so.

Structured pruning must leave a model that transformers rebuilds from its config.json alone, so each family
states which cuts its config can express:

- Llama-like models (Llama, Mistral, Qwen2/3, SmolLM2) and Gemma 1/2/3 have ``head_dim``,
  ``num_attention_heads``, ``num_key_value_heads`` and ``intermediate_size``: whole KV groups (one key/value
  head and the query heads sharing it) and MLP channels can go, with ``head_dim`` kept as it is.
- GPT-2, BERT, OPT, Phi, Phi-3, GPT-NeoX and Falcon derive the head size from ``hidden_size / num_heads``
  (Falcon's ``head_dim`` is a read-only property) or fuse q, k and v into one layer, and transformers 5
  dropped ``pruned_heads``, so a model with fewer heads could not be loaded back: their heads are kept, their
  MLP channels (``n_inner``, ``intermediate_size``, ``ffn_dim``, ``ffn_hidden_size``) and layers can go.
- Phi-3 fuses the gate and up projections into one ``gate_up_proj`` whose outputs are the two halves
  ``[gate; up]``: a channel is one row in each half.

Every family can lose whole layers (``num_hidden_layers``; per-layer config lists such as ``layer_types`` and
Qwen-MoE's ``mlp_only_layers`` follow). Mixture-of-experts models, BLOOM and Mamba can lose layers only.
Widths stay uniform across layers: one config field holds one number for all of them.
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
    mlp_out: str | None  # the layer reading them; None where only whole layers can go
    mlp_width_field: str | None
    layers_field: str
    #: (q, k, v, o) projections, when the config can express fewer heads; None otherwise
    attention: tuple[str, str, str, str] | None = None
    #: why heads cannot be removed, when they cannot
    no_heads_reason: str = ""
    #: how many stacked parts of the MLP width each ``mlp_in`` layer outputs (2: Phi-3's fused [gate; up])
    mlp_in_parts: int = 1
    #: why MLP channels cannot be removed, when they cannot
    no_channels_reason: str = ""

    @property
    def prunes_heads(self) -> bool:
        return self.attention is not None

    @property
    def prunes_channels(self) -> bool:
        return self.mlp_out is not None

    @property
    def rows_per_channel(self) -> int:
        """Weight rows (or columns) of ``hidden_size`` values that one MLP channel owns, the down projection's included."""
        return len(self.mlp_in) * self.mlp_in_parts + 1


def _derived_head_size(config_name: str) -> str:
    return (f"{config_name}'s config has no head_dim field (transformers computes hidden_size / "
            "num_attention_heads), so fewer heads could not be loaded back")


LLAMA = Family(
    name="Llama-like (Llama, Mistral, Qwen2, Qwen3, SmolLM2, Gemma 1/2/3)",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"),
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
    no_heads_reason=_derived_head_size("BERT"),
)
OPT = Family(
    name="OPT",
    model_types=("opt",),
    blocks="decoder.layers",
    mlp_in=("fc1",),
    mlp_out="fc2",
    mlp_width_field="ffn_dim",
    layers_field="num_hidden_layers",
    no_heads_reason=_derived_head_size("OPT"),
)
PHI = Family(
    name="Phi (phi-1, phi-2)",
    model_types=("phi",),
    blocks="layers",
    mlp_in=("mlp.fc1",),
    mlp_out="mlp.fc2",
    mlp_width_field="intermediate_size",
    layers_field="num_hidden_layers",
    no_heads_reason=_derived_head_size("Phi"),
)
PHI3 = Family(
    name="Phi-3 (Phi-3, Phi-3.5, Phi-4-mini)",
    model_types=("phi3",),
    blocks="layers",
    mlp_in=("mlp.gate_up_proj",),
    mlp_out="mlp.down_proj",
    mlp_width_field="intermediate_size",
    layers_field="num_hidden_layers",
    no_heads_reason="Phi-3 fuses q, k and v into one qkv_proj layer, and its head size follows from hidden_size / "
    "num_attention_heads",
    mlp_in_parts=2,
)
GPT_NEOX = Family(
    name="GPT-NeoX (Pythia)",
    model_types=("gpt_neox",),
    blocks="layers",
    mlp_in=("mlp.dense_h_to_4h",),
    mlp_out="mlp.dense_4h_to_h",
    mlp_width_field="intermediate_size",
    layers_field="num_hidden_layers",
    no_heads_reason="GPT-NeoX fuses q, k and v into one query_key_value layer, and its head size follows from "
    "hidden_size / num_attention_heads",
)
FALCON = Family(
    name="Falcon",
    model_types=("falcon",),
    blocks="h",
    mlp_in=("mlp.dense_h_to_4h",),
    mlp_out="mlp.dense_4h_to_h",
    mlp_width_field="ffn_hidden_size",
    layers_field="num_hidden_layers",
    no_heads_reason="Falcon fuses q, k and v into one query_key_value layer, and its head_dim is computed from "
    "hidden_size / num_attention_heads",
)
_EXPERTS = ("its MLP is a mixture of experts, each with its own width, which one config field cannot describe "
            "after a cut")
_NO_HEADS_MOE = "structured pruning of mixture-of-experts models removes whole layers only"


def layers_only(name: str, model_types: tuple[str, ...], blocks: str, no_heads_reason: str, no_channels_reason: str) -> Family:
    """A family whose config can only lose whole layers."""
    return Family(name=name, model_types=model_types, blocks=blocks, mlp_in=(), mlp_out=None, mlp_width_field=None,
                  layers_field="num_hidden_layers", no_heads_reason=no_heads_reason,
                  no_channels_reason=no_channels_reason)


MOE = layers_only(
    "mixture of experts, layers only (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS)",
    ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"), "layers", _NO_HEADS_MOE, _EXPERTS,
)
BLOOM = layers_only(
    "BLOOM, layers only", ("bloom",), "h", _derived_head_size("BLOOM"),
    "BLOOM's MLP width is 4 x hidden_size in its code, with no config field to hold a smaller one",
)
MAMBA = layers_only(
    "Mamba, layers only", ("mamba",), "layers", "Mamba has no attention heads",
    "Mamba's blocks are state-space mixers, not MLPs",
)
FAMILIES: tuple[Family, ...] = (LLAMA, GPT2, BERT, OPT, PHI, PHI3, GPT_NEOX, FALCON, MOE, BLOOM, MAMBA)


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
        if not (isinstance(blocks, nn.ModuleList) and len(blocks)):
            continue
        if family.mlp_out is None or _lookup(blocks[0], family.mlp_out) is not None:
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


def mlp_width_of(block: nn.Module, family: Family) -> int:
    """One block's MLP hidden width: the down projection's inputs."""
    in_features, _, _ = linear_sizes(sub(block, family.mlp_out))
    return in_features


def mlp_width(model: nn.Module, family: Family) -> int:
    """The MLP's hidden width (the same in every block)."""
    return mlp_width_of(blocks_of(model, family)[0], family)
