"""The metric registry: name -> Metric class, filled by the modules of this package.

A new metric is one new module here with a class decorated by :func:`register_metric` (or a call of
``register_metric`` from another package); ``compare(..., metrics=["name"])`` and the command line
find it by name.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from smashlib.errors import UnknownNameError, did_you_mean
from smashlib.evaluation.metrics.base import Metric, Quantity

METRICS: dict[str, type[Metric]] = {}

#: What compare() measures when no metrics are named (each is skipped, with its reason, where it does
#: not apply). Ordered as the report shows them: size first, speed, memory, then quality.
DEFAULT_METRICS: tuple[str, ...] = (
    "size",
    "disk_size",
    "latency",
    "throughput",
    "generation",
    "memory",
    "perplexity",
    "accuracy",
    "agreement",
)


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator adding a metric to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name to be registered as a metric")
    registered = METRICS.get(cls.name)
    if registered is not None and registered.__qualname__ != cls.__qualname__:
        raise ValueError(f"two metrics are named '{cls.name}': {registered} and {cls}")
    METRICS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        if not info.name.endswith(".base"):
            importlib.import_module(info.name)


def get_metric(metric: str | Metric, **options: Any) -> Metric:
    """A metric instance from its name (built with ``options``) or the instance itself."""
    if isinstance(metric, Metric):
        return metric
    if metric not in METRICS:
        raise UnknownNameError(
            f"unknown metric '{metric}'.{did_you_mean(metric, METRICS)} Metrics: {', '.join(METRICS)}."
        )
    return METRICS[metric](**options)


def metrics_table() -> list[dict[str, Any]]:
    """One row per metric (name, what it measures, the values it reports): for docs and the CLI."""
    return [
        {"name": name, "summary": cls.summary, "values": [q.key for q in cls.quantities]}
        for name, cls in METRICS.items()
    ]


_load_builtin()

__all__ = ["DEFAULT_METRICS", "METRICS", "Metric", "Quantity", "get_metric", "metrics_table", "register_metric"]
