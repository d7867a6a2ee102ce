"""Evaluate, compare and report: how much smaller, faster and how close to the original a smashed model is.

>>> report = compare(base_model, smashed_model, data=texts, tokenizer=tokenizer)   # doctest: +SKIP
>>> print(report); report.to_json("report.json"); report.plot("report.png")        # doctest: +SKIP

Metrics live in a registry (:data:`METRICS`, name -> class; :func:`register_metric` adds one); the
runner in :mod:`smashlib.evaluation.compare` makes every comparison fair (same inputs, same threads,
interleaved timed rounds); :class:`Report` shows the result.
"""
from __future__ import annotations

from smashlib.evaluation.compare import compare, evaluate, evaluate_models
from smashlib.evaluation.inputs import EvalInputs, prepare_inputs
from smashlib.evaluation.machine import machine_info
from smashlib.evaluation.metrics import DEFAULT_METRICS, METRICS, Metric, Quantity, get_metric, register_metric
from smashlib.evaluation.report import Report

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "EvalInputs",
    "Metric",
    "Quantity",
    "Report",
    "compare",
    "evaluate",
    "evaluate_models",
    "get_metric",
    "machine_info",
    "prepare_inputs",
    "register_metric",
]
