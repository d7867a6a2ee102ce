"""Audio samples in the two forms speech pipelines take: a waveform tensor or a path to a file.

Datasets are read with ``Audio(decode=False)`` so that no audio decoder (torchcodec, which must match
the installed torch) is needed to load them; the pipeline or processor that consumes the batch reads
the file. Undecoded samples that hold only bytes (streamed datasets) are written once to a cache
folder, named by their hash, so they too become paths.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from smashlib.data.errors import DataError


def audio_cache() -> Path:
    return Path(os.environ.get("SMASHLIB_CACHE", Path.home() / ".cache" / "smashlib")) / "audio"


def _bytes_to_path(data: bytes, name: str | None) -> str:
    suffix = Path(name).suffix if name else ".audio"
    target = audio_cache() / (hashlib.sha1(data).hexdigest() + suffix)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".part")
        partial.write_bytes(data)
        os.replace(partial, target)
    return str(target)


def audio_input(value: Any) -> torch.Tensor | str:
    """A float waveform tensor or a file path, from a tensor, an array, a path, a decoded
    ``{"array", "sampling_rate"}`` dict, an undecoded ``{"bytes", "path"}`` dict or a torchcodec decoder."""
    if isinstance(value, torch.Tensor):
        return value.float()
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if isinstance(value, dict):
        if value.get("array") is not None:
            return torch.as_tensor(value["array"]).float()
        if value.get("bytes"):
            return _bytes_to_path(value["bytes"], value.get("path"))
        if value.get("path"):
            return str(value["path"])
    if hasattr(value, "get_all_samples"):  # datasets >= 4 decodes audio to a torchcodec AudioDecoder
        return value.get_all_samples().data.float()
    if hasattr(value, "__array__"):
        return torch.as_tensor(value).float()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (int, float)):
        return torch.tensor(value, dtype=torch.float32)  # datasets stores arrays given to Dataset.from_dict as lists
    raise DataError(
        f"cannot read audio from a {type(value).__name__}: give waveform tensors or arrays, file paths, "
        "or the 'audio' column of a datasets.Dataset."
    )
