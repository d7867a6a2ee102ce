"""What tune() optimizes and what it bounds: speed and size objectives, quality measures, by name.

Each objective names the metric of :mod:`smashlib.evaluation` that measures it and the value it reads,
so a trial measures exactly what compare() would, base and smashed paired in one process. Costs given
to SMAC are ratios to the base measured in the same trial (lower is better), which keeps trials
comparable while the machine's load changes between them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smashlib.errors import UnknownNameError, did_you_mean


@dataclass(frozen=True)
class Objective:
    name: str
    metric: str  #: the evaluation metric that measures it
    key: str  #: the value of that metric's report
    higher_is_better: bool
    label: str

    def cost(self, base: float, smashed: float) -> float:
        """smashed relative to base, as a cost to minimize (0.33 = three times better)."""
        return base / smashed if self.higher_is_better else smashed / base

    def speedup(self, base: float, smashed: float) -> float:
        """How many times better than the base (the number a user reads: 3.1x)."""
        return 1.0 / self.cost(base, smashed)


@dataclass(frozen=True)
class Quality:
    name: str
    metric: str
    key: str
    #: "ratio": relative increase (perplexity); "relative_decrease": (base - smashed) / base (accuracy);
    #: "one_minus": 1 - smashed, for a value that is 1 for the base itself (agreement with the base).
    drop_kind: str
    label: str

    def drop(self, base: float | None, smashed: float) -> float:
        if self.drop_kind == "ratio":
            return smashed / base - 1.0
        if self.drop_kind == "relative_decrease":
            return (base - smashed) / base
        return 1.0 - smashed


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("decode_tokens_per_s", "generation", "decode_tokens_per_s", True, "decode"),
        Objective("latency", "latency", "latency_p50_ms", False, "latency p50"),
        Objective("size", "size", "weights_memory_mb", False, "size"),
        Objective("peak_memory", "memory", "peak_memory_mb", False, "peak memory"),
    )
}
QUALITIES: dict[str, Quality] = {
    q.name: q
    for q in (
        Quality("perplexity", "perplexity", "perplexity", "ratio", "perplexity"),
        Quality("accuracy", "accuracy", "accuracy", "relative_decrease", "accuracy"),
        Quality("agreement", "agreement", "top1_agreement", "one_minus", "top-1 agreement"),
    )
}
#: Always measured beside the chosen objective: the front is speed, size and quality together.
SIZE = OBJECTIVES["size"]


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UnknownNameError(f"unknown objective '{name}'.{did_you_mean(name, OBJECTIVES)} Objectives: {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[name]


def get_quality(name: str) -> Quality:
    if name not in QUALITIES:
        raise UnknownNameError(f"unknown quality '{name}'.{did_you_mean(name, QUALITIES)} Qualities: {', '.join(QUALITIES)}.")
    return QUALITIES[name]


def measured_objectives(objective: Objective) -> list[Objective]:
    """The objectives a trial measures: the chosen one, and size (free to measure) when it is not size."""
    return [objective] if objective is SIZE else [objective, SIZE]


def smac_costs(record: dict[str, Any], objectives: list[Objective], failed_cost: float) -> list[float]:
    """The cost vector SMAC is told: one ratio per objective, then the quality drop (failures: worst)."""
    if record["status"] in ("failed", "timeout"):
        return [failed_cost] * (len(objectives) + 1)
    # a recipe rejected on quality is not timed: its speed counts as the base's (cost 1.0)
    return [*(record["costs"].get(o.name, 1.0) for o in objectives), max(record["quality_drop"], 0.0)]
