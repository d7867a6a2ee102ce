"""How long a proposed trial will take, judged from the trials already logged.

A time limit stops a trial at its next step (smashlib.time_limit), but the minutes it ran are lost:
with three minutes left, starting a recipe whose like took ten only wastes them. So before a trial
starts, the search compares the time left with the fastest logged trial of the same algorithms, its
smashing phase scaled by the work asked for (calibration samples x sequence length x steps). The
estimate is deliberately optimistic (the fastest, not the mean): a trial is skipped only when even
that cannot fit, and a recipe of a kind never tried runs, under the limit, since nothing is known.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from smashlib.algorithm import GROUP_ORDER

#: Hyperparameter name endings whose values multiply the work of smashing.
WORK_SUFFIXES = ("_calibration_samples", "_sequence_length", "_steps")
#: Statuses of trials whose seconds are a full measurement (failed and timed-out ones stopped early).
MEASURED = ("ok", "rejected")


def recipe_kind(values: dict[str, Any]) -> tuple[str, ...]:
    """The chosen algorithms, one per group, in group order."""
    return tuple(str(values[group]) for group in GROUP_ORDER if values.get(group) is not None)


def workload(values: dict[str, Any]) -> float:
    """Product of the work-sized hyperparameters of ``values`` (1 without any)."""
    sizes = [float(v) for k, v in values.items() if k.endswith(WORK_SUFFIXES) and isinstance(v, (int, float)) and v > 0]
    return math.prod(sizes) if sizes else 1.0


def expected_seconds(values: dict[str, Any], records: Iterable[dict[str, Any]]) -> float | None:
    """Seconds the fastest logged trial of the same kind suggests ``values`` needs, or None if none ran."""
    kind, work = recipe_kind(values), workload(values)
    estimates = []
    for record in records:
        if record.get("status") not in MEASURED or recipe_kind(record["config"]) != kind:
            continue
        seconds = record.get("seconds", {})
        smash = float(seconds.get("smash", 0.0))
        total = float(seconds.get("total", smash))
        estimates.append(smash * work / workload(record["config"]) + (total - smash))
    return min(estimates) if estimates else None
