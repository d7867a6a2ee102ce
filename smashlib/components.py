"""What a SmashConfig carries besides its choices: tokenizer, processor and data.

They are kept apart from the ConfigSpace values because they are objects, not hyperparameters; the
saved config records only their names, never the data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Components:
    """The objects attached with ``add_tokenizer``, ``add_processor`` and ``add_data``."""

    tokenizer: Any = None
    processor: Any = None
    data: Any = None
    #: name -> a short description (e.g. the Hub id or dataset name and sizes) for the saved config.
    descriptions: dict[str, Any] = field(default_factory=dict)
    #: algorithm name -> what it keeps from the original model during one smash() run (a teacher); never saved.
    kept: dict[str, Any] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return getattr(self, name, None) is not None


def describe_pretrained(obj: Any) -> str:
    """A short name for a tokenizer or processor: its Hub id or path when it has one, else its class."""
    return getattr(obj, "name_or_path", None) or type(obj).__name__
