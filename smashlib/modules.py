"""Small operations on a model's structure that several algorithms share.

Which layers an algorithm touches is decided in one place, :mod:`smashlib.targets`; the names below
that lived here before (``output_head_names``, ``OUTLIER_LAYERS``) are re-exported from there.
"""
from __future__ import annotations

from torch import nn

from smashlib.targets import OUTLIER_LAYERS, output_head_names

__all__ = ["OUTLIER_LAYERS", "output_head_names", "replace_module"]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted path) is: how quantizers swap layers."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
