"""How many bytes a KV cache holds: full-precision, quantized and residual tensors of every layer.

Why walk the objects: a quantized cache keeps its data in backend-specific containers (quanto's
QTensor with inner data, scale and shift tensors; hqq's packed tensor plus a dict of scales and
zeros), so the only backend-independent measure is to follow every tensor a layer holds.
"""
from __future__ import annotations

from typing import Any

import torch


def _tensor_bytes(value: Any, seen: set[int]) -> int:
    if isinstance(value, torch.Tensor):
        flatten = getattr(value, "__tensor_flatten__", None)
        if callable(flatten) and type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            names, _ = flatten()  # a wrapper subclass: its data live in inner tensors
            return sum(_tensor_bytes(getattr(value, name), seen) for name in names)
        if value.numel() == 0:
            return 0
        key = value.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return value.untyped_storage().nbytes()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value):
        return sum(_tensor_bytes(v, seen) for v in vars(value).values())
    return 0


def cache_bytes(cache: Any) -> int:
    """Bytes of storage held by the tensors of ``cache`` (each storage counted once)."""
    seen: set[int] = set()
    return sum(_tensor_bytes(layer, seen) for layer in getattr(cache, "layers", [cache]))
