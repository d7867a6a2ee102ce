"""One trial: smash a fresh copy of the base model with one recipe, measure it against the base, judge it.

A trial never raises: whatever goes wrong (settings that cannot run, an algorithm failing, a metric
failing, the time slot running out) is written into its record with the reason, so one bad recipe
never stops the search. The base model is measured again in every trial, in the same process and
interleaved with the smashed one (compare()'s rules), so each ratio is fair even while the machine's
load changes between trials.
"""
from __future__ import annotations

import copy
import gc
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from smashlib.time_limit import TimeLimitReached, check_time_limit, time_limit
from smashlib.tuning.objectives import SIZE, Objective, Quality, measured_objectives, smac_costs

#: Cost SMAC is told for a trial that produced no measurement: worse than any real ratio.
FAILED_COST = 1e3
#: Longest reason kept in a record (tracebacks of compilers run to pages).
REASON_CHARS = 400


@dataclass
class TrialPlan:
    """What every trial needs besides the recipe: picklable, so Dask workers run the same trials."""

    objective: Objective
    quality: Quality
    max_quality_drop: float
    device: str
    calibration_data: Any  # what cfg.add_data() receives: its train split is the calibration data
    eval_inputs: Any  # EvalInputs of the held-out (test) split, prepared once in the main process
    new_tokens: int = 32
    runs: int = 3
    threads: int | None = None
    trial_time_limit: float | None = None
    deadline: float | None = None  # time.time() at which the whole search's budget ends

    def slot_end(self, started: float) -> float | None:
        ends = [e for e in (self.deadline, started + self.trial_time_limit if self.trial_time_limit else None) if e]
        return min(ends) if ends else None


def _metrics(plan: TrialPlan) -> tuple[list[Any], list[Any]]:
    """(metrics judged first: quality and size, metrics timed only for recipes within the bound)."""
    from smashlib.evaluation import get_metric
    from smashlib.evaluation.metrics.generation import Generation
    from smashlib.evaluation.metrics.timing import Latency

    settings = {
        "generation": lambda: Generation(new_tokens=plan.new_tokens, runs=plan.runs, warmup=1),
        "latency": lambda: Latency(runs=2 * plan.runs, warmup=1),
    }
    first = list(dict.fromkeys([plan.quality.metric, SIZE.metric]))
    timed = [o.metric for o in measured_objectives(plan.objective) if o.metric not in first]
    return [get_metric(name) for name in first], [settings[n]() if n in settings else get_metric(n) for n in timed]


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def _fresh_inputs(inputs: Any) -> Any:
    """The same batches without the cached logits of earlier trials (their cache is keyed by id(model))."""
    from smashlib.evaluation.inputs import EvalInputs

    return EvalInputs(inputs.batches, inputs.description)


def _slot_text(started: float, slot_end: float | None) -> str:
    return "no slot" if slot_end is None else f"{slot_end - started:.0f} s"


def recipe_config(tokenizer: Any, values: dict[str, Any], plan: TrialPlan) -> Any:
    """The SmashConfig a trial of ``values`` smashes with, its tokenizer and calibration data attached."""
    from smashlib.config import SmashConfig
    from smashlib.tuning.first_batch import calibrates

    config = SmashConfig(values, device=plan.device)
    if tokenizer is not None:
        config.add_tokenizer(tokenizer)
    if calibrates(values):
        config.add_data(plan.calibration_data)
    return config


def refusal(base: Any, tokenizer: Any, values: dict[str, Any], plan: TrialPlan) -> str | None:
    """Why smash() would refuse ``values`` before touching a model (settings an algorithm's own checks
    reject, a package or device missing), or None. The space's conditions cannot say all of that
    (gptq_grid="q8_0" needs 8 bits in groups of 32): about a fifth of SMAC's random proposals are such
    recipes, and screening them costs milliseconds instead of a trial each."""
    from smashlib.smash import check_before_smashing

    try:
        check_before_smashing(base, recipe_config(tokenizer, values, plan))
    except Exception as error:  # noqa: BLE001 - whatever smash() would raise first is the reason
        return _short(error)
    return None


def smash_recipe(base: Any, tokenizer: Any, values: dict[str, Any], plan: TrialPlan) -> Any:
    """A SmashedModel of a deep copy of ``base`` (the base itself is never touched)."""
    from smashlib.smash import smash

    return smash(copy.deepcopy(base), recipe_config(tokenizer, values, plan), verbose=False)


def run_trial(base: Any, tokenizer: Any, values: dict[str, Any], plan: TrialPlan) -> tuple[dict[str, Any], Any]:
    """(record, smashed model or None). The record is plain JSON: config, status, reason, values, costs."""
    from smashlib.evaluation import evaluate_models

    started = time.time()
    slot_end = plan.slot_end(started)
    record: dict[str, Any] = {
        "config": values, "status": "failed", "reason": "", "seconds": {},
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    smashed = None
    try:
        with time_limit(slot_end):  # long steps inside (calibration, training, evaluation) stop at the slot's end
            check_time_limit("smashing")  # the slot may have ended waiting for a worker
            smashed = smash_recipe(base, tokenizer, values, plan)
            record["seconds"]["smash"] = round(time.time() - started, 1)
            check_time_limit("measuring quality")
            judged, timed = _metrics(plan)
            inputs = _fresh_inputs(plan.eval_inputs)
            measure = time.time()
            quality = evaluate_models({"base": base, "smashed": smashed}, inputs, judged, threads=plan.threads, verbose=False)
            record["seconds"]["quality"] = round(time.time() - measure, 1)
            judge_quality(record, quality, plan)
            if record["status"] == "ok" and timed:  # timing a recipe that is rejected anyway would waste the slot
                check_time_limit("warming up")
                warm = time.time()
                for metric in timed:  # compiles (torch_compile) here, so the slot is checked before timing
                    metric.warm_up(smashed, inputs)
                record["seconds"]["warm_up"] = round(time.time() - warm, 1)
                check_time_limit("timing")
                measure = time.time()
                speed = evaluate_models({"base": base, "smashed": smashed}, inputs, timed, threads=plan.threads, verbose=False)
                record["seconds"]["timing"] = round(time.time() - measure, 1)
                judge_speed(record, speed, plan)
    except TimeLimitReached as error:
        record.update(status="timeout", reason=f"out of its time slot ({_slot_text(started, slot_end)}): stopped "
                                               f"{error.step or 'early'}, {time.time() - started:.0f} s in")
    except Exception as error:  # noqa: BLE001 - recorded with its reason; the search goes on
        record.update(status="failed", reason=_short(error))
    record["seconds"]["total"] = round(time.time() - started, 1)
    if record["status"] not in ("ok", "rejected"):
        smashed = None
        gc.collect()
    return record, smashed


def _read(report: Any, keys: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    base = {k: report.value(k, "base") if k != "top1_agreement" else 1.0 for k in keys}
    smashed = {k: report.value(k, "smashed") for k in keys}
    missing = [k for k in keys if smashed[k] is None or base[k] is None]
    if missing:
        reasons = "; ".join(f"{name}: {why}" for name, why in report.skipped.items()) or "not measured"
        raise RuntimeError(f"{', '.join(missing)} not measured ({reasons})")
    return base, smashed


def judge_quality(record: dict[str, Any], report: Any, plan: TrialPlan) -> None:
    """Quality drop, size and the verdict, from the paired report of the quality metrics."""
    key = plan.quality.key
    base, smashed = _read(report, [key, SIZE.key])
    record["values"] = {"base": base, "smashed": smashed}
    record["costs"] = {SIZE.name: SIZE.cost(base[SIZE.key], smashed[SIZE.key])}
    drop = plan.quality.drop(base[key], smashed[key])
    record["quality_drop"] = drop
    within = drop <= plan.max_quality_drop
    record["status"] = "ok" if within else "rejected"
    record["reason"] = (
        f"{plan.quality.label} {smashed[key]:.4g} vs base {base[key]:.4g}: "
        f"drop {drop:+.2%} {'<=' if within else '>'} bound {plan.max_quality_drop:.2%}"
    )
    if not within and plan.objective.name not in record["costs"]:
        record["reason"] += " (not timed)"


def judge_speed(record: dict[str, Any], report: Any, plan: TrialPlan) -> None:
    objective = plan.objective
    base, smashed = _read(report, [objective.key])
    record["values"]["base"].update(base)
    record["values"]["smashed"].update(smashed)
    record["costs"][objective.name] = objective.cost(base[objective.key], smashed[objective.key])


class ShippedModel:
    """The base model as Dask scatters it: wrapped, so it travels by plain pickle. Dask's own serializer
    for torch modules turns their hook dictionaries into plain dicts, on which torch cannot register
    hooks any more (measured: "cannot create weak reference to 'dict' object" in half's input casting)."""

    def __init__(self, model: Any) -> None:
        self.model = model


class TrialFunction:
    """SMAC's target function: a Configuration in, (costs, {"record": ...}) out.

    Holds the base model for trials in this process; on a Dask cluster the base model arrives once per
    worker as scattered data (``base_model=``) instead of being pickled with every trial.
    """

    def __init__(self, plan: TrialPlan, base_model: Any, tokenizer: Any) -> None:
        self.plan = plan
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.last_model: Any = None  # the smashed model of the latest in-process trial (for best_model)

    @property
    def __code__(self) -> Any:  # SMAC fingerprints its target function by its code object
        return type(self).__call__.__code__

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["last_model"] = None
        if state.pop("_scatter_base", False):
            state["base_model"] = None  # travels as scattered data, not with the function
        return state

    def __call__(self, config: Any, seed: int = 0, base_model: Any = None) -> tuple[list[float], dict[str, Any]]:
        from smashlib.tuning.space import active_values

        base = base_model.model if isinstance(base_model, ShippedModel) else base_model or self.base_model
        record, smashed = run_trial(base, self.tokenizer, active_values(config), self.plan)
        self.last_model = smashed
        costs = smac_costs(record, measured_objectives(self.plan.objective), FAILED_COST)
        return costs, {"record": record}
