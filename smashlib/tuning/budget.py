"""Budgets as people write them: "15m", "90s", "1h30m", or a number of seconds."""
from __future__ import annotations

import re

from smashlib.errors import SmashConfigError

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def parse_budget(budget: str | float) -> float:
    """Seconds in ``budget``; a clear error for anything else."""
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        seconds = float(budget)
    else:
        text = str(budget).strip().lower().replace(" ", "")
        parts = _PART.findall(text)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
            raise SmashConfigError(f"budget {budget!r} is not a duration: write e.g. '15m', '90s', '1h30m' or seconds.")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise SmashConfigError(f"budget {budget!r} is not positive: give the search some time, e.g. '3m'.")
    return seconds
