"""A time limit that long steps respect, so a caller with a budget (tune()'s trials) gets control back.

Phases such as a GPTQ calibration of hundreds of samples cannot be timed from outside without killing
the process, and checking only between phases let a 15-minute search run 20 (a half-hour calibration
started just before the budget ended). So the limit is cooperative: every loop that shows a progress
bar (GPTQ's blocks, training steps, evaluation rounds) checks it at each step through
``smashlib.progress``, and the loops that run many batches without a bar call ``check_time_limit``
themselves. Outside a ``time_limit`` block the checks cost one context-variable read.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from smashlib.errors import SmashError

_ENDS_AT: ContextVar[float | None] = ContextVar("smashlib_time_limit", default=None)


class TimeLimitReached(SmashError, TimeoutError):
    """A step started after the time limit of the enclosing ``time_limit`` block had passed."""

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.step = step  #: when it stopped, e.g. "before gptq calibration of block 3"


@contextmanager
def time_limit(ends_at: float | None) -> Iterator[None]:
    """Within the block, long steps raise TimeLimitReached once ``time.time()`` passes ``ends_at``
    (None: no limit). Nested blocks keep the earlier end."""
    ends = [end for end in (_ENDS_AT.get(), ends_at) if end is not None]
    token = _ENDS_AT.set(min(ends) if ends else None)
    try:
        yield
    finally:
        _ENDS_AT.reset(token)


def time_left() -> float | None:
    """Seconds until the enclosing limit ends (negative once passed), or None without one."""
    ends = _ENDS_AT.get()
    return None if ends is None else ends - time.time()


def check_time_limit(step: str) -> None:
    """Raise TimeLimitReached, naming ``step``, when the enclosing limit has passed."""
    left = time_left()
    if left is not None and left < 0:
        raise TimeLimitReached(f"time limit reached before {step} ({-left:.0f} s past it)", f"before {step}")
