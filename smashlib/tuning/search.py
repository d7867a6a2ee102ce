"""tune(): search the SmashConfig's own space with SMAC3 for the fastest recipe within a quality bound.

Order of trials: the first batch (each weight algorithm's defaults and the benchmark's recipes, no
calibration before calibration), then the reference recipes, then runtime variants (the compiler) of
the recipes that met the bound, then SMAC3's proposals (a random forest over the space, several
objectives scalarized by ParEGO) until the budget ends. Every result, whoever proposed it, is told to
SMAC, so its model learns from the first batch too. Trials run through SMAC's own runners: in this
process one after another, or on a Dask cluster (``client=``) as many at once as it has worker threads.
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from smashlib.errors import SmashConfigError
from smashlib.tuning.budget import parse_budget
from smashlib.tuning.estimate import expected_seconds
from smashlib.tuning.first_batch import cost_rank, first_batch, runtime_variants
from smashlib.tuning.log import TrialLog
from smashlib.tuning.objectives import get_objective, get_quality, measured_objectives, smac_costs
from smashlib.tuning.result import TuneResult, recipe_text
from smashlib.tuning.space import active_values, candidate_algorithms, config_key, restricted_space, to_configuration
from smashlib.tuning.trial import FAILED_COST, ShippedModel, TrialFunction, TrialPlan, refusal, smash_recipe

#: How many of the best recipes within the bound get their runtime variants (compiler) tried.
RUNTIME_VARIANTS_OF = 2
#: SMAC proposals in a row that were all tried already before the space is taken as exhausted.
MAX_REPEATS = 50
#: Proposals in a row too long for the time left (tuning/estimate.py) before the search ends early.
MAX_TOO_LONG = 10


def _data_module(data: Any) -> Any:
    """One data module for both uses: its train split calibrates, its test split measures."""
    from smashlib.data import to_data_module

    return to_data_module(data)


def _smac(space: Any, objectives: list[str], seed: int, target: Any) -> Any:
    from smac import HyperparameterOptimizationFacade as Facade
    from smac import Scenario

    scenario = Scenario(
        space, objectives=objectives, deterministic=True, n_trials=10**6, seed=seed,
        output_directory=tempfile.mkdtemp(prefix="smashlib-tune-smac-"),
    )
    initial = Facade.get_initial_design(scenario, n_configs=1)
    return Facade(
        scenario, target, initial_design=initial,
        multi_objective_algorithm=Facade.get_multi_objective_algorithm(scenario),
        overwrite=True, logging_level=logging.ERROR,
    ), scenario


def tune(
    model: Any,
    tokenizer: Any = None,
    data: Any = "PydocTopics",
    objective: str = "decode_tokens_per_s",
    quality: str = "perplexity",
    max_quality_drop: float = 0.01,
    budget: str | float = "15m",
    seed: int = 0,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    device: str | None = None,
    log: str | None = None,
    client: Any = None,
    max_trials: int | None = None,
    trial_time_limit: str | float | None = None,
    reference: Sequence[dict[str, Any]] = (),
    eval_samples: int = 4,
    eval_tokens: int = 128,
    new_tokens: int = 32,
    runs: int = 3,
    threads: int | None = None,
    verbose: bool = True,
) -> TuneResult:
    """Search for the recipe best on ``objective`` whose ``quality`` drops by at most ``max_quality_drop``.

    ``objective``: decode_tokens_per_s, latency, size or peak_memory. ``quality``: perplexity (relative
    increase), accuracy (relative decrease) or agreement (1 - top-1 agreement with the base).
    ``data`` calibrates on its train split and measures on its test split. ``budget`` ("15m") bounds the
    whole search: when it ends the best found so far is returned. ``log`` (a .jsonl path) records each
    trial as it finishes; rerunning with the same log continues. ``client``: a dask.distributed Client.
    ``reference``: recipes measured like the others and reported beside the best, never chosen.
    """
    from smashlib.config import default_device
    from smashlib.evaluation import prepare_inputs

    chosen_objective, chosen_quality = get_objective(objective), get_quality(quality)
    if not 0 <= max_quality_drop < 1:
        raise SmashConfigError(f"max_quality_drop={max_quality_drop!r} is a share: use e.g. 0.01 for 1%.")
    seconds = parse_budget(budget)
    device = device or default_device()
    algorithms, left_out = candidate_algorithms(include, exclude, device)
    space = restricted_space(algorithms, seed)
    module = _data_module(data)
    inputs = prepare_inputs(module, tokenizer, {"max_length": eval_tokens}, 1, eval_samples, model=model)
    settings = {
        "objective": objective, "quality": quality, "max_quality_drop": max_quality_drop, "device": device,
        "inputs": inputs.description, "eval_tokens": eval_tokens, "new_tokens": new_tokens, "runs": runs,
        "include": sorted(include) if include else None, "exclude": sorted(exclude) if exclude else None,
        "seed": seed,
    }
    trial_log = TrialLog(log, settings)
    started = time.time()
    plan = TrialPlan(
        chosen_objective, chosen_quality, max_quality_drop, device, module, inputs, new_tokens, runs, threads,
        parse_budget(trial_time_limit) if trial_time_limit is not None else seconds / 2, started + seconds,
    )
    search = _Search(space, algorithms, plan, trial_log, model, tokenizer, client, seed, verbose)
    search.queue_references([active_values(to_configuration(space, _complete(r))) for r in reference])
    stopped = search.run(started + seconds, max_trials)
    return TuneResult(
        trial_log.records, settings, left_out,
        smash_again=lambda values: smash_recipe(model, tokenizer, values, plan), kept_models=search.kept,
        stopped=stopped,
    )


def _complete(values: dict[str, Any]) -> dict[str, Any]:
    from smashlib.config import SmashConfig

    return SmashConfig(values, device="cpu").to_dict()


class _Search:
    """The loop: propose (queue, then SMAC), run through SMAC's runner, log, tell SMAC, repeat."""

    def __init__(self, space, algorithms, plan, trial_log, model, tokenizer, client, seed, verbose) -> None:
        from smac.runner import DaskParallelRunner, TargetFunctionRunner

        self.space, self.plan, self.log, self.seed, self.verbose = space, plan, trial_log, seed, verbose
        self.objectives = measured_objectives(plan.objective)
        self.target = TrialFunction(plan, model, tokenizer)
        self.smac, scenario = _smac(space, [o.name for o in self.objectives] + ["quality_drop"], seed, self.target)
        single = TargetFunctionRunner(scenario, self.target, required_arguments=["seed"])
        self.scatter: dict[str, Any] = {}
        if client is not None:
            self.target._scatter_base = True
            self.scatter = {"base_model": client.scatter(ShippedModel(model), broadcast=True)}
            self.runner: Any = DaskParallelRunner(single, dask_client=client)
        else:
            self.runner = single
        self.client = client
        self.queue: deque[tuple[dict[str, Any], str]] = deque()
        self.references: set[str] = set()
        self.kept: dict[int, Any] = {}
        self.varied: set[str] = set()
        self.in_flight: dict[str, tuple[str, bool]] = {}
        self.first_batch_left = 0
        self.refused = 0  # SMAC proposals smash() would refuse (told to SMAC, never run)
        for values in first_batch(space, algorithms):
            self.queue.append((values, "first batch"))
        self.first_batch_left = len(self.queue)
        for record in self.log.records:  # a resumed search: SMAC learns from the logged trials first
            self._tell(record)

    # ------------------------------------------------------------------ proposals
    def queue_references(self, recipes: list[dict[str, Any]]) -> None:
        for values in recipes:
            self.references.add(config_key(values))
            self.queue.insert(self.first_batch_left, (values, "reference"))

    def _propose(self) -> tuple[dict[str, Any], str] | None:
        while self.queue:
            values, origin = self.queue.popleft()
            if origin == "first batch":
                self.first_batch_left -= 1
                self._after_first_batch()  # a resumed search may skip the whole batch: variants come next
            if not self._already_done(values, origin):
                return values, origin
        from smac.main.exceptions import ConfigurationSpaceExhaustedException

        for _ in range(MAX_REPEATS):
            try:
                info = self.smac.ask()
            except ConfigurationSpaceExhaustedException:  # SMAC found nothing new to propose
                return None
            values = active_values(info.config)
            if not self._already_done(values, "smac") and not self._refused(info, values):
                return values, "smac"
        return None

    def _refused(self, info: Any, values: dict[str, Any]) -> bool:
        """Whether smash() would refuse ``values`` outright: then SMAC is told it failed, and no trial runs
        (nor is logged: it measured nothing)."""
        from smac.runhistory.dataclasses import TrialValue

        reason = refusal(self.target.base_model, self.target.tokenizer, values, self.plan)
        if reason is None:
            return False
        costs = smac_costs({"status": "failed"}, self.objectives, FAILED_COST)
        self.smac.tell(info, TrialValue(cost=costs, time=0.0), save=False)
        self.refused += 1
        if self.verbose:
            print(f"smashlib tune: refused before running: {recipe_text(values)} - {reason}", flush=True)
        return True

    def _already_done(self, values: dict[str, Any], origin: str) -> bool:
        """Whether this recipe was tried; a repeat proposed by the search reuses the measurement."""
        key = config_key(values)
        if key in self.in_flight:
            return True
        reference = origin == "reference"
        done = [r for r in self.log.records if config_key(r["config"]) == key]
        if any(bool(r.get("reference")) == reference for r in done):
            if not reference:
                self._tell(next(r for r in done if not r.get("reference")))
            return True
        if done:  # measured under the other role (reference vs searched): same numbers, new row
            self._record({**done[-1], "origin": origin, "reference": reference,
                          "reason": f"{done[-1]['reason']} (measured in trial {done[-1]['trial']})"})
            return True
        return False

    # ------------------------------------------------------------------ running
    def run(self, deadline: float, max_trials: int | None) -> str:
        from smac.runhistory.dataclasses import TrialInfo

        new = too_long = 0
        stopped = "space exhausted"
        while True:
            if time.time() >= deadline:
                stopped = "budget ended"
                break
            if max_trials is not None and new >= max_trials:
                stopped = f"max_trials={max_trials} reached"
                break
            proposal = self._propose()
            if proposal is None:
                break
            values, origin = proposal
            if self._too_long(values, origin, deadline - time.time()):
                too_long += 1
                if too_long >= MAX_TOO_LONG:
                    stopped = f"budget ended early: {too_long} proposals in a row would not fit in the time left"
                    break
                continue
            too_long = 0
            info = TrialInfo(config=to_configuration(self.space, values), seed=self.seed)
            self.in_flight[config_key(values)] = (origin, origin == "reference")
            new += 1
            if self.client is None:
                self._finish(*self.runner.run_wrapper(info))
                continue
            self.runner.submit_trial(info, **self.scatter)  # blocks while every worker is busy
            for finished in self.runner.iter_results():
                self._finish(*finished)
        while self.client is not None and self.runner.is_running():  # trials stop at their next check
            self.runner.wait()
            for finished in self.runner.iter_results():
                self._finish(*finished)
        if self.refused:
            stopped += f"; {self.refused} proposals that smash() refuses were told to SMAC, not run"
        return stopped

    def _too_long(self, values: dict[str, Any], origin: str, left: float) -> bool:
        """Whether the logged trials say ``values`` cannot finish in the ``left`` seconds (then it is
        not started, and not logged: a resumed search with more time runs it)."""
        expected = expected_seconds(values, self.log.records)
        if expected is None or expected <= left:
            return False
        if self.verbose:
            print(f"smashlib tune: skipped [{origin}] {recipe_text(values)}: trials like it took "
                  f"{expected:.0f} s, {max(left, 0):.0f} s left", flush=True)
        return True

    def _finish(self, info: Any, value: Any) -> None:
        values = active_values(info.config)
        origin, reference = self.in_flight.pop(config_key(values), ("smac", False))
        record = dict(value.additional_info.get("record") or {})
        if not record:  # the runner caught an error outside the trial's own handling
            record = {"config": values, "status": "failed", "seconds": {"total": round(value.time, 1)},
                      "reason": str(value.additional_info.get("error", "crashed"))[:400]}
        record.update(origin=origin, reference=reference)
        number = self._record(record)
        if self.client is None and record["status"] == "ok" and not reference:
            self._keep_if_best(number)
        self.target.last_model = None

    def _record(self, record: dict[str, Any]) -> int:
        number = len(self.log.records) + 1
        record = {"trial": number, **{k: v for k, v in record.items() if k not in ("kind", "trial")}}
        self.log.append(record)
        self._tell(record)
        if self.verbose:
            print(f"smashlib tune: trial {number} [{record['origin']}] {record['status']} in "
                  f"{record['seconds'].get('total', 0):.0f} s: {recipe_text(record['config'])} - {record['reason']}", flush=True)
        self._after_first_batch()
        return number

    def _tell(self, record: dict[str, Any]) -> None:
        from smac.runhistory.dataclasses import TrialInfo, TrialValue

        if record.get("reference"):
            return
        try:
            info = TrialInfo(config=to_configuration(self.space, record["config"]), seed=self.seed)
        except Exception:  # noqa: BLE001 - a logged recipe outside today's space (include= changed) teaches nothing
            return
        costs = smac_costs(record, self.objectives, FAILED_COST)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.smac.tell(info, TrialValue(cost=costs, time=record["seconds"].get("total", 0.0)), save=False)

    def _keep_if_best(self, number: int) -> None:
        ok = [r for r in self.log.records if r["status"] == "ok" and not r.get("reference")]
        best = min(ok, key=lambda r: r["costs"][self.plan.objective.name])
        if best["trial"] == number:
            self.kept = {number: self.target.last_model}

    def _after_first_batch(self) -> None:
        """Once the weight recipes of the first batch are measured, queue runtime variants of the best ones."""
        if self.first_batch_left > 0:
            return
        ok = sorted((r for r in self.log.records if r["status"] == "ok" and not r.get("reference")), key=lambda r: r["costs"][self.plan.objective.name])
        position = next((i for i, (_, o) in enumerate(self.queue) if o != "reference"), len(self.queue))
        for record in ok[:RUNTIME_VARIANTS_OF]:
            key = config_key(record["config"])
            if key in self.varied:
                continue
            self.varied.add(key)
            for variant in sorted(runtime_variants(self.space, record["config"]), key=cost_rank):
                self.queue.insert(position, (variant, "runtime variant"))
                position += 1
