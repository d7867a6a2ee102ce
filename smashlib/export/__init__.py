"""Saving a smashed model in formats other engines read: ``save_pretrained(path, format=NAME)``.

A format is a name mapped to the function that writes it (the registry below), imported only when
used, so the packages a format needs (``compressed-tensors``, ``gguf``) are needed only by it. Each
exporter checks first that it can represent everything the model holds and otherwise raises
:class:`~smashlib.errors.UnsupportedExportError` naming what the format supports, before writing.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smashlib.errors import MissingPackageError, UnknownNameError, did_you_mean


@dataclass(frozen=True)
class ExportFormat:
    """One saving format: where its writer lives, the package it needs, and who reads the result."""

    name: str
    writer: str  # "module:function", imported on use
    package: str | None  # the import name of the package the writer needs
    extra: str | None  # the smashlib extra that installs it
    read_by: str


FORMATS: dict[str, ExportFormat] = {
    "smashlib": ExportFormat(
        "smashlib", "smashlib.serialization:save_smashed_model", None, None, "SmashedModel.from_pretrained"
    ),
    "compressed-tensors": ExportFormat(
        "compressed-tensors",
        "smashlib.export.compressed_tensors:save_compressed_tensors",
        "compressed_tensors",
        "compressed-tensors",
        "transformers (AutoModelForCausalLM.from_pretrained), vLLM, SGLang, TGI",
    ),
    "gguf": ExportFormat("gguf", "smashlib.export.gguf:save_gguf", "gguf", "gguf", "llama.cpp and its bindings, Ollama, LM Studio"),
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UnknownNameError(
            f"unknown save format {name!r}: the formats are {sorted(FORMATS)}.{did_you_mean(name, FORMATS)}"
        )
    return FORMATS[name]


def export(smashed: Any, path: str | os.PathLike, format: str, **options: Any) -> Path:
    """Write ``smashed`` to ``path`` in ``format`` (see :data:`FORMATS`) and return where it went."""
    spec = get_format(format)
    if spec.package is not None and importlib.util.find_spec(spec.package) is None:
        raise MissingPackageError(
            f"format={format!r} needs the {spec.package} package: pip install 'smashlib[{spec.extra}]'."
        )
    module_name, function_name = spec.writer.split(":")
    writer = getattr(importlib.import_module(module_name), function_name)
    return writer(smashed, path, **options)
