"""An LRU store of prompts' KV caches that finds, for a new prompt, the longest prefix already computed.

Why prompts and not declared prefixes: the shared part of prompts (a system prompt, a few-shot
preamble) is rarely known to the code that calls ``generate``. Storing each prompt's cache (cut to the
prompt, so generated tokens are never reused) and matching on the longest common run of token ids finds
the shared prefix by itself: the second prompt that starts with the same 512 tokens reuses them.

A KV cache of a causal model at position i depends only on tokens 0..i, so the first n positions of
any stored prompt that shares n tokens with the new one are exactly the new prompt's (up to floating
point: the stored values came from a pass over a different number of tokens).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading token ids two 1-D tensors share."""
    length = min(len(a), len(b))
    differs = (a[:length] != b[:length]).nonzero()
    return int(differs[0]) if len(differs) else length


def cache_slices(cache: Any, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of each layer of a DynamicCache, cut to the first ``length`` positions."""
    return [(layer.keys[..., :length, :], layer.values[..., :length, :]) for layer in cache.layers]


def dynamic_cache_from(slices: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A new DynamicCache of ``slices``. The store's tensors are safe: a DynamicCache only ever replaces its
    tensors by concatenations (new tensors), it never writes into them."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=slices)


class PrefixStore:
    """At most ``max_prefixes`` prompts' caches; a match counts only from ``min_prefix_tokens`` shared tokens."""

    def __init__(self, max_prefixes: int, min_prefix_tokens: int) -> None:
        self.max_prefixes = max_prefixes
        self.min_prefix_tokens = min_prefix_tokens
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, list]] = OrderedDict()
        #: (reused tokens) of every lookup, 0 for a miss: what the tests and benchmarks read
        self.reused: list[int] = []

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def lookup(self, tokens: torch.Tensor) -> tuple[Any, int]:
        """(a fresh DynamicCache of the longest stored prefix of ``tokens``, its length), or (None, 0).

        At least one token of ``tokens`` is left out of the match: generate needs one to compute logits from.
        """
        best_key, best_length = None, 0
        for key, (stored, _) in self._entries.items():
            length = min(common_prefix_length(stored, tokens), len(tokens) - 1)
            if length > best_length:
                best_key, best_length = key, length
        if best_key is None or best_length < self.min_prefix_tokens:
            self.reused.append(0)
            return None, 0
        self._entries.move_to_end(best_key)
        self.reused.append(best_length)
        _, slices = self._entries[best_key]
        return dynamic_cache_from([(k[..., :best_length, :], v[..., :best_length, :]) for k, v in slices]), best_length

    def add(self, tokens: torch.Tensor, cache: Any) -> None:
        """Keep the first ``len(tokens)`` positions of ``cache`` as the cache of ``tokens`` (copied, compact)."""
        if len(tokens) < self.min_prefix_tokens or cache.get_seq_length() < len(tokens):
            return
        key = tuple(tokens.tolist())
        slices = [(k.clone(), v.clone()) for k, v in cache_slices(cache, len(tokens))]
        self._entries[key] = (tokens.clone(), slices)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_prefixes:
            self._entries.popitem(last=False)
