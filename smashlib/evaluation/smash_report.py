"""``smash(model, cfg, report=True)``: the before/after table printed at the end of smashing.

smash() modifies the model in place, so the original is copied before the first algorithm runs (this
costs one more copy of the model in memory, only when a report is asked for). The inputs are the data
and tokenizer attached to the config (test split: text never used for calibration); without them only
the sizes can be compared, and the report says so.
"""
from __future__ import annotations

import copy
import sys
from typing import Any

import torch

from smashlib.errors import SmashError

#: Kept small so a report adds seconds, not minutes, to smash(): sample windows, tokens per window.
REPORT_SAMPLES = 8
REPORT_TOKENS = 128
REPORT_METRICS: tuple[str, ...] = ("size", "disk_size", "latency", "generation", "memory", "perplexity", "accuracy", "agreement")
NO_INPUTS_NOTE = (
    "smash(report=True): no data attached to the config, so only sizes are compared. For speed and quality, "
    "attach inputs: cfg.add_tokenizer(...) and cfg.add_data('PydocTopics') (or your own texts)."
)


def keep_original(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model as it is before smashing, to compare the smashed model with."""
    try:
        return copy.deepcopy(model)
    except Exception as error:
        raise SmashError(
            f"smash(report=True) needs a copy of the original model and this one cannot be copied "
            f"({type(error).__name__}: {error}): load a second copy yourself and call smashlib.compare(original, smashed)."
        ) from error


def has_inputs(components: Any) -> bool:
    """Whether the attached data can become model inputs (text data also needs a tokenizer)."""
    data = components.data
    return data is not None and (
        components.tokenizer is not None or not getattr(data, "needs_tokenizer", False) or _module_has_tokenizer(data)
    )


def compare_after_smash(original: torch.nn.Module, smashed: Any, verbose: bool = True, data: Any = None) -> Any:
    """Compare ``smashed`` with ``original`` on ``data`` (default: the config's attached data) and return
    the Report; with no inputs at all only the sizes are measured."""
    from smashlib.evaluation.compare import compare

    components = smashed.smash_config.components
    if data is None and has_inputs(components):
        data = components.data
    return compare(
        original,
        smashed,
        data=data,
        tokenizer=components.tokenizer,
        tokenizer_kwargs={"max_length": REPORT_TOKENS},
        max_samples=REPORT_SAMPLES,
        metrics=list(REPORT_METRICS),
        verbose=verbose,
    )


def report_after_smash(original: torch.nn.Module, smashed: Any, verbose: bool = True, stream: Any = None) -> Any:
    """What smash(report=True) does: compare, print the table (and why it is short, if it is), return the Report."""
    stream = stream or sys.stdout
    if not has_inputs(smashed.smash_config.components):
        print(NO_INPUTS_NOTE, file=stream)
    report = compare_after_smash(original, smashed, verbose)
    print(report, file=stream)
    return report


def _module_has_tokenizer(data: Any) -> bool:
    resolve = getattr(data, "resolved_tokenizer", None)
    return callable(resolve) and resolve() is not None
