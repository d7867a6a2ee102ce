"""The model check shared by the KV-cache algorithms: a decoder-only causal LM whose layers all attend fully."""
from __future__ import annotations

import torch

from smashlib.errors import UnsupportedModelError


def check_causal_lm_with_full_attention(model: torch.nn.Module, algorithm: str) -> None:
    """Raise UnsupportedModelError naming what ``algorithm`` needs when ``model`` has no plain growing KV cache."""
    config = getattr(model, "config", None)
    needs = (
        f"{algorithm} needs a decoder-only causal language model with a KV cache (a transformers *ForCausalLM "
        "such as LlamaForCausalLM or GPT2LMHeadModel)"
    )
    if config is None or not hasattr(model, "generate"):
        raise UnsupportedModelError(f"{needs}; {type(model).__name__} has no transformers config or generate().")
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{needs}; {type(model).__name__} is an encoder-decoder model (its prompt goes to the encoder, not the cache)."
        )
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and not can_generate():
        raise UnsupportedModelError(f"{needs}; {type(model).__name__} does not generate text (no language-model head).")
    supports_cache = getattr(model, "_supports_default_dynamic_cache", None)
    if callable(supports_cache) and not supports_cache():
        raise UnsupportedModelError(
            f"{needs}; {type(model).__name__} keeps a recurrent state instead of a key/value cache."
        )
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = set(getattr(text, "layer_types", None) or ["full_attention"])
    sliding = getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)
    if layer_types != {"full_attention"} or sliding:
        raise UnsupportedModelError(
            f"{needs} whose layers all attend to the full context; {type(model).__name__} has "
            f"{'sliding-window' if sliding else ', '.join(sorted(layer_types - {'full_attention'}))} attention layers."
        )
