"""A KV cache of preallocated buffers that eager prefill and the AOT-compiled step share.

transformers' ``StaticCache`` preallocates too, but every call attends over its whole capacity (masked),
which at batch 1 reads capacity x layers x heads of keys and values per token whatever the context. These
layers return a view of the positions stored so far, like ``DynamicCache``, so attention reads what it uses.
The stored length is a Python int between calls (eager code sees plain shapes); the compiled step is
given it as the size of an input, so one graph serves every position.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PreallocatedLayer(CacheLayerMixin):
    """One layer's keys and values in buffers [batch, kv heads, capacity, head dim], filled from the start."""

    # not offered to generate's own torch.compile of decoding steps: the AOT-compiled step is ours
    is_compileable = False
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.length = 0
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffers exist from the start."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        start, new = self.length, key_states.shape[-2]
        if isinstance(start, int) and start + new > self.capacity:
            raise ValueError(f"the preallocated KV cache holds {self.capacity} tokens; this call needs {start + new}")
        self.keys.narrow(2, start, new).copy_(key_states)
        self.values.narrow(2, start, new).copy_(value_states)
        self.length = start + new
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_cache_shape(self) -> int:
        return self.capacity

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        self.length = 0  # the stale values are overwritten before they are read again

    def crop(self, max_length: int) -> None:
        self.length = max(0, min(self.length, max_length if max_length >= 0 else self.length + max_length))


class PreallocatedCache(Cache):
    """The layers' buffers, one :class:`PreallocatedLayer` per decoder layer."""

    def __init__(self, buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(layers=[PreallocatedLayer(keys, values) for keys, values in buffers])

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    def set_length(self, length) -> None:
        for layer in self.layers:
            layer.length = length


def allocate_buffers(model: torch.nn.Module, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed key and value buffers for batch 1 and ``capacity`` tokens, in the dtype attention runs in."""
    from transformers.integrations.executorch import get_head_shapes

    config = model.config.get_text_config(decoder=True)
    heads, head_dim = get_head_shapes(config)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    layers = config.num_hidden_layers
    heads = heads if isinstance(heads, list) else [heads] * layers  # per layer where the layers differ
    head_dim = head_dim if isinstance(head_dim, list) else [head_dim] * layers
    return [(torch.zeros(1, h, capacity, d, dtype=dtype), torch.zeros(1, h, capacity, d, dtype=dtype))
            for h, d in zip(heads, head_dim)]
