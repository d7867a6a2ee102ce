"""One place for progress bars, so every long step shows one the same way and `verbose=False` hides them.

It is also where long steps meet ``smashlib.time_limit``: under a time limit each item is checked
before it is handed out, whether the bar is shown or not.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from smashlib.time_limit import check_time_limit, time_left

T = TypeVar("T")

_QUIET: ContextVar[bool] = ContextVar("smashlib_quiet", default=False)


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Within the block, no progress bar is shown: smash(verbose=False) runs its algorithms in one, so a
    bar deep inside an algorithm (GPTQ's blocks) stays hidden too without every algorithm taking a flag."""
    token = _QUIET.set(enabled or _QUIET.get())
    try:
        yield
    finally:
        _QUIET.reset(token)


def progress(items: Iterable[T], desc: str, disable: bool = False, **kwargs: Any) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar (stderr), or return them unchanged when disabled; under a time
    limit, stop with TimeLimitReached at the first item that starts past it."""
    if not (disable or _QUIET.get()):
        from tqdm.auto import tqdm

        items = tqdm(items, desc=desc, leave=False, **kwargs)
    return _Checked(items, desc) if time_left() is not None else items


class _Checked(Iterable[T]):
    """``items`` with the time limit checked before each one; the bar's own methods (set_postfix) pass
    through."""

    def __init__(self, items: Iterable[T], desc: str) -> None:
        self._items, self._desc = items, desc

    def __iter__(self) -> Iterator[T]:
        for item in self._items:
            check_time_limit(self._desc)
            yield item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._items, name)
