"""compare() and evaluate(): run the metrics on models under the same conditions and build a Report.

Fairness is the runner's job, not each metric's: every model sees the same batches with the same
number of threads; timed metrics are warmed up on every model first, then measured in rounds whose
order alternates (A B, B A, A B, ...), so a machine that gets slower or faster during the run, or a
cache warmed by the previous call, affects both models alike.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from smashlib.evaluation.inputs import EvalInputs, prepare_inputs
from smashlib.evaluation.machine import machine_info
from smashlib.evaluation.metrics import DEFAULT_METRICS, Metric, Quantity, get_metric
from smashlib.evaluation.report import Report
from smashlib.evaluation.runtime import model_device, unwrap
from smashlib.progress import progress
from smashlib.time_limit import TimeLimitReached


@contextmanager
def _evaluation_state(models: Sequence[Any], threads: int | None):
    """Eval mode and one thread count for the run; the models' modes and torch's threads restored after."""
    previous_threads = torch.get_num_threads()
    modes = [unwrap(m).training for m in models]
    if threads is not None:
        torch.set_num_threads(threads)
    for model in models:
        unwrap(model).eval()
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        for model, training in zip(models, modes):
            unwrap(model).train(training)


def describe_model(model: Any) -> str:
    """What a model is, in a few words: its class, and the algorithms that smashed it."""
    inner = unwrap(model)
    algorithms = getattr(model, "algorithms", None) if inner is not model else None
    text = type(inner).__name__
    if algorithms is not None:  # a smashed model's dtypes are mixed: its algorithms say more
        return f"{text}, smashed with {', '.join(algorithms) or 'nothing'}"
    dtype = next((p.dtype for p in inner.parameters()), None)
    return f"{text}, {str(dtype).replace('torch.', '')} parameters" if dtype is not None else text


def run_metrics(
    models: Mapping[str, Any], inputs: EvalInputs, metrics: Sequence[Metric], verbose: bool = True
) -> tuple[list[Quantity], dict[str, dict[str, float | None]], dict[str, str]]:
    """Measure every metric on every model; returns (quantities measured, values per model, skipped)."""
    labels = list(models)
    reference = labels[0]
    values: dict[str, dict[str, float | None]] = {label: {} for label in labels}
    quantities: list[Quantity] = []
    skipped: dict[str, str] = {}
    for metric in metrics:
        reasons = {label: metric.skip_reason(models[label], inputs) for label in labels}
        if reasons[reference] or (metric.paired and len(labels) < 2):
            skipped[metric.name] = reasons[reference] or "compares a model with the base model: needs two models"
            continue
        active = [label for label in labels if not reasons[label] and not (metric.paired and label == reference)]
        for label in labels:
            if reasons[label]:
                skipped[f"{metric.name} ({label})"] = reasons[label]
        try:
            measured = _measure(metric, models, reference, active, inputs, verbose)
        except TimeLimitReached:  # the caller's budget, not this metric, ended the measurement
            raise
        except Exception as error:  # noqa: BLE001 - one metric failing must not cost the whole report; reported
            skipped[metric.name] = f"failed: {type(error).__name__}: {error}"
            warnings.warn(f"smashlib: metric '{metric.name}' failed: {type(error).__name__}: {error}", stacklevel=2)
            continue
        for label, result in measured.items():
            values[label].update(result)
        quantities.extend(metric.quantities)
    return quantities, values, skipped


def _measure(
    metric: Metric, models: Mapping[str, Any], reference: str, active: list[str], inputs: EvalInputs, verbose: bool
) -> dict[str, dict[str, float | None]]:
    if metric.paired:
        steps = progress(active, desc=metric.name, disable=not verbose)
        return {label: metric.measure_pair(models[reference], models[label], inputs) for label in steps}
    rounds = metric.rounds
    # warm-up of every model first, then rounds in alternating order: A B, B A, A B, ...
    schedule = [("warm-up", label) for label in active]
    for index in range(rounds):
        schedule += [(index, label) for label in (active if index % 2 == 0 else active[::-1])]
    samples: dict[str, list[Any]] = {label: [] for label in active}
    show = verbose and (rounds > 1 or len(active) > 1)
    for step, label in progress(schedule, desc=metric.name, disable=not show):
        if step == "warm-up":
            metric.warm_up(models[label], inputs)
        else:
            samples[label].append(metric.measure(models[label], inputs))
    return {label: metric.summarize(samples[label], inputs) for label in active}


def _resolve_metrics(metrics: Sequence[str | Metric] | None) -> list[Metric]:
    return [get_metric(m) for m in (metrics if metrics is not None else DEFAULT_METRICS)]


def _attached(model: Any, name: str) -> Any:
    """A component (tokenizer, data) attached to a SmashedModel's config, if any."""
    config = getattr(model, "smash_config", None) if unwrap(model) is not model else None
    components = getattr(config, "components", None)
    return getattr(components, name, None)


def evaluate_models(
    models: Mapping[str, Any],
    data: Any = None,
    metrics: Sequence[str | Metric] | None = None,
    tokenizer: Any = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    max_samples: int | None = None,
    threads: int | None = None,
    verbose: bool = True,
) -> Report:
    """Measure ``metrics`` on every model of ``models`` (label -> model; the first is the reference)."""
    if not models:
        raise ValueError("evaluate_models needs at least one model")
    chosen = _resolve_metrics(metrics)
    last = list(models.values())[-1]  # the smashed model: its config may carry the data and tokenizer
    data = data if data is not None else _attached(last, "data")
    tokenizer = tokenizer if tokenizer is not None else _attached(last, "tokenizer")
    inputs = prepare_inputs(data, tokenizer, tokenizer_kwargs, batch_size, max_samples, model=last)
    started = time.perf_counter()
    with _evaluation_state(list(models.values()), threads):
        machine = machine_info({model_device(m).type for m in models.values()})
        quantities, values, skipped = run_metrics(models, inputs, chosen, verbose)
    settings = {
        "inputs": inputs.description,
        "batch_size": batch_size,
        "metrics": {metric.name: metric.settings() for metric in chosen},
        "seconds": round(time.perf_counter() - started, 1),
    }
    descriptions = {label: describe_model(model) for label, model in models.items()}
    return Report(list(models), quantities, values, machine, settings, skipped, descriptions)


def attach_report(model: Any, report: Report) -> None:
    """Keep the report on a SmashedModel (``smashed.report``), where its model card finds it."""
    if unwrap(model) is not model:
        object.__setattr__(model, "report", report)


def compare(
    base_model: Any,
    smashed_model: Any,
    data: Any = None,
    metrics: Sequence[str | Metric] | None = None,
    tokenizer: Any = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    max_samples: int | None = None,
    threads: int | None = None,
    labels: tuple[str, str] = ("base", "smashed"),
    verbose: bool = True,
) -> Report:
    """Compare a smashed model with its base model on the same inputs, under the same conditions.

    ``data`` is a list of dicts of tensors, a list of texts (with ``tokenizer`` and optional
    ``tokenizer_kwargs``), a ``datasets.Dataset``, a dataset name or ``SmashDataModule``; by default,
    the data and tokenizer attached to the smashed model's config. ``metrics`` are names from
    ``smashlib.evaluation.METRICS`` or Metric instances (default: every metric that applies).
    The returned :class:`Report` is also kept as ``smashed_model.report`` for a SmashedModel.
    """
    if labels[0] == labels[1]:
        raise ValueError(f"the two models need distinct labels, got {labels}")
    report = evaluate_models(
        {labels[0]: base_model, labels[1]: smashed_model},
        data, metrics, tokenizer, tokenizer_kwargs, batch_size, max_samples, threads, verbose,
    )
    attach_report(smashed_model, report)
    return report


def evaluate(
    model: Any,
    data: Any = None,
    metrics: Sequence[str | Metric] | None = None,
    label: str = "model",
    **options: Any,
) -> Report:
    """Measure one model alone (a one-column report); the options are those of :func:`compare`."""
    return evaluate_models({label: model}, data, metrics, **options)
