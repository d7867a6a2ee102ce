"""One place for progress bars, so every long step shows one the same way and `verbose=False` hides them."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, disable: bool = False, **kwargs: Any) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar (stderr), or return them unchanged when disabled."""
    if disable:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, **kwargs)
