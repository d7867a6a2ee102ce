"""prefix_cache: the KV cache of a shared prompt prefix computed once and reused by later generate calls.

Why: chat and few-shot prompts repeat a long system prompt or preamble, and prefill (the pass over
the prompt) is most of the time to the first token. Each prompt's KV cache is kept (cut to the prompt)
in an LRU of ``max_prefixes`` prompts; a later prompt that shares at least ``min_prefix_tokens``
leading tokens with one of them starts from a copy of that part and prefills only the rest
(see :mod:`smashlib.caches.prefix_store`). The output is the uncached model's: causal attention makes
the cached positions exactly what the new prompt would compute.

Used for calls transformers can continue from a cache as they are: one unpadded prompt, greedy or
sampled search with one sequence; other calls (padded batches, beam search, a cache passed in) run
unchanged. Runtime only: nothing is saved, loading starts with an empty store.
"""
from __future__ import annotations

import threading

import torch
from ConfigSpace import Integer

from smashlib.algorithm import Algorithm
from smashlib.caches.generate_hook import cache_keyword, caller_passed_cache, install_generate_hook
from smashlib.caches.model_checks import check_causal_lm_with_full_attention
from smashlib.caches.prefix_store import PrefixStore


def _single_unpadded_prompt(model, inputs, kwargs) -> torch.Tensor | None:
    """The prompt's token ids when this call can start from a cached prefix, else None."""
    ids = inputs if inputs is not None else kwargs.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or ids.is_floating_point():
        return None
    mask = kwargs.get("attention_mask")
    if mask is not None and not bool(torch.all(mask == 1)):
        return None
    generation_config = kwargs.get("generation_config") or model.generation_config
    beams = kwargs.get("num_beams", getattr(generation_config, "num_beams", 1) or 1)
    sequences = kwargs.get("num_return_sequences", getattr(generation_config, "num_return_sequences", 1) or 1)
    if (
        beams != 1 or sequences != 1 or caller_passed_cache(kwargs) or kwargs.get("use_cache") is False
        or kwargs.get("inputs_embeds") is not None or kwargs.get("assistant_model") is not None
    ):
        return None
    return ids


def prefix_cached_generate(model, original, store: PrefixStore):
    """``original`` (the model's generate) starting from the longest cached prefix of each prompt."""
    from transformers import DynamicCache

    keyword = cache_keyword(model)
    lock = threading.Lock()

    def generate(inputs=None, **kwargs):
        ids = _single_unpadded_prompt(model, inputs, kwargs)
        if ids is None:
            return original(inputs, **kwargs) if inputs is not None else original(**kwargs)
        kwargs.pop("input_ids", None)
        tokens = ids[0].detach().cpu()
        with lock:
            cache, _ = store.lookup(tokens)
        if cache is None:
            cache = DynamicCache()
        output = original(input_ids=ids, **kwargs, **{keyword: cache})
        with lock:
            store.add(tokens, cache)
        return output

    generate.prefix_store = store
    return generate


class PrefixCache(Algorithm):
    name = "prefix_cache"
    group = "cacher"
    summary = "Reuse the KV cache of a shared prompt prefix across generate calls (LRU of prompts); same outputs."
    hyperparameters = (
        Integer("max_prefixes", (1, 1024), default=8, log=True),
        Integer("min_prefix_tokens", (1, 65_536), default=16, log=True),
    )

    def check_model(self, model):
        check_causal_lm_with_full_attention(model, self.name)

    def apply(self, model, settings, components):
        store = PrefixStore(settings["max_prefixes"], settings["min_prefix_tokens"])
        install_generate_hook(model, self.name, lambda original: prefix_cached_generate(model, original, store))
        return model
