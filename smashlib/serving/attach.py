"""Where a batcher lives on a model, so a SmashedModel routes its calls through it.

The batcher is kept in the model's ``__dict__`` (not a submodule, not a tensor): it is never saved, it
goes away with the model, and the model itself stays a plain transformers model for everything else.
Calls go through the SmashedModel rather than through a replaced ``forward``: a compiled model
(torch_compile runs before the batcher) then runs its compiled code on the whole batch.
"""
from __future__ import annotations

from typing import Any

BATCHER_ATTRIBUTE = "_smashlib_batcher"


def attach_batcher(model: Any, batcher: Any) -> None:
    old = batcher_of(model)
    if old is not None:
        old.close()
    model.__dict__[BATCHER_ATTRIBUTE] = batcher


def batcher_of(model: Any) -> Any:
    """The batcher attached to ``model``, or None."""
    return getattr(model, "__dict__", {}).get(BATCHER_ATTRIBUTE)
