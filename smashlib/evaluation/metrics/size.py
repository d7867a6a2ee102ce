"""Size of the weights: bytes and stored values in memory, and bytes in the saved folder.

Bytes are counted as the tensors really hold them: an int8 weight is one byte per value, a packed
4-bit weight (uint8 holding two values) half a byte, and tensor subclasses (torchao, quanto) are
opened up into the plain tensors they are made of, never counted at their logical dtype. Tied
weights are counted once.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from smashlib.evaluation.metrics import register_metric
from smashlib.evaluation.metrics.base import Metric, Quantity
from smashlib.evaluation.runtime import unwrap

MB = 1e6
#: Files that hold weights in a saved folder (the rest: configs, tokenizer, model card).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _plain_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a (possibly subclassed) tensor is stored in."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        parts: list[torch.Tensor] = []
        for name in names:
            parts.extend(_plain_parts(getattr(tensor, name)))
        return parts
    return [tensor]


def _storage_key(tensor: torch.Tensor) -> tuple:
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        pointer = 0
    if not pointer:  # meta tensors and exotic storages: identity is the best we have
        return ("id", id(tensor))
    return (tensor.device.type, pointer, tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)


def _state_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's saved state (what quantization libraries put there: packed weights, scales, zeros),
    falling back on parameters and buffers when a module's state_dict cannot be built."""
    try:
        values = model.state_dict(keep_vars=True).values()
    except Exception:  # noqa: BLE001 - a library's failing state_dict; still count what we can see
        values = [*model.parameters(), *model.buffers()]
    return [value for value in values if isinstance(value, torch.Tensor)]


def weight_footprint(model: Any) -> tuple[int, int]:
    """(bytes, stored values) of the model's weights in memory, each storage counted once."""
    seen: set[tuple] = set()
    total_bytes = total_values = 0
    for tensor in _state_tensors(unwrap(model)):
        for part in _plain_parts(tensor):
            key = _storage_key(part)
            if key in seen:
                continue
            seen.add(key)
            total_bytes += part.numel() * part.element_size()
            total_values += part.numel()
    return total_bytes, total_values


def folder_bytes(folder: str | os.PathLike) -> tuple[int, int]:
    """(bytes of weight files, bytes of all files) under ``folder``."""
    weights = everything = 0
    for path in Path(folder).rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            everything += size
            if path.name.endswith(WEIGHT_SUFFIXES):
                weights += size
    return weights, everything


def save_for_size(model: Any, folder: str) -> None:
    """Save ``model`` the way its owner would: SmashedModel/transformers save_pretrained, else the
    state dict as safetensors (plain torch modules)."""
    save = getattr(model, "save_pretrained", None)
    if callable(save):
        save(folder)
        return
    from safetensors.torch import save_model

    save_model(unwrap(model), os.path.join(folder, "model.safetensors"))


@register_metric
class Size(Metric):
    name = "size"
    summary = "Bytes of the weights in memory (real storage: int8 and packed tensors at their size) and stored values."
    quantities = (
        Quantity("weights_memory_mb", "weights in memory", "MB", True),
        Quantity("stored_values", "stored values (parameters)", "count", None),
    )

    def measure(self, model, inputs):
        return weight_footprint(model)

    def summarize(self, samples, inputs):
        size, values = samples[-1]
        return {"weights_memory_mb": size / MB, "stored_values": float(values)}


@register_metric
class DiskSize(Metric):
    name = "disk_size"
    summary = "Bytes of the saved folder's weight files (and of the whole folder); saves to a temporary folder if needed."
    quantities = (
        Quantity("disk_weights_mb", "weights on disk", "MB", True),
        Quantity("disk_folder_mb", "saved folder", "MB", True),
    )

    def __init__(self, folders: Mapping[Any, str | os.PathLike] | None = None) -> None:
        # keyed by the model object: a folder the model was loaded from or saved to, read instead of saving
        self._folders = {id(model): Path(folder) for model, folder in (folders or {}).items()}

    def settings(self):
        return {"folders": {str(k): str(v) for k, v in self._folders.items()}} if self._folders else {}

    def skip_reason(self, model, inputs):
        if id(model) in self._folders:
            return None if self._folders[id(model)].is_dir() else f"folder {self._folders[id(model)]} does not exist"
        try:
            import safetensors  # noqa: F401
        except ImportError:
            return "needs a folder to read or the safetensors package to save one"
        return None

    def measure(self, model, inputs):
        if id(model) in self._folders:
            return folder_bytes(self._folders[id(model)])
        staging = tempfile.mkdtemp(prefix="smashlib-size-")
        try:
            save_for_size(model, staging)
            return folder_bytes(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def summarize(self, samples, inputs):
        weights, everything = samples[-1]
        return {"disk_weights_mb": weights / MB, "disk_folder_mb": everything / MB}
