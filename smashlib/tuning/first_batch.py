"""The trials tune() runs before SMAC's model takes over: cheap ones first, the compiler last.

SMAC's surrogate needs a few results before its proposals beat chance, and on a CPU a trial costs from
seconds (a cast to bf16) to minutes (GPTQ's calibration, then torch.compile's first run). So the first
batch is chosen, not sampled: the recipes that docs/benchmarks.md measured (a warm start from
known-good settings) and every other weight algorithm at its defaults, ordered by what they cost —
no calibration before calibration. Runtime groups (compiler, cacher, batcher) change speed but not
the weights, so they are tried only on weight recipes that already met the quality bound
(:func:`runtime_variants`), instead of paying a compilation for recipes that are rejected anyway.
"""
from __future__ import annotations

from typing import Any

from ConfigSpace import ConfigurationSpace

from smashlib import registry
from smashlib.algorithm import RUNTIME_GROUPS, Algorithm
from smashlib.tuning.space import config_key, to_configuration

#: Recipes measured in docs/benchmarks.md (benchmarks/quantizers.py) and docs/cpu_recipe.md
#: (benchmarks/cpu_recipe.py), weight part only: the runtime groups are added by runtime_variants() once a
#: recipe meets the bound.
STARTING_POINTS: tuple[dict[str, Any], ...] = (
    {"quantizer": "half", "half_dtype": "bfloat16"},
    {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1, "gptq_compute_dtype": "bfloat16"},
    {"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear", "torch_dynamic_smoothquant": True},
    {"quantizer": "torchao", "torchao_quant_type": "int8wo"},
    {"quantizer": "hqq", "hqq_weight_bits": 8},
    {"quantizer": "quanto", "quanto_weights": "qint8"},
    {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1},
    {"quantizer": "gptq", "gptq_weight_bits": 4, "gptq_group_size": 32, "gptq_method": "rtn"},
)


def _completed(space: ConfigurationSpace, values: dict[str, Any]) -> dict[str, Any] | None:
    """``values`` with every active hyperparameter at its default, or None when the space forbids it."""
    from smashlib.config import SmashConfig

    try:
        config = SmashConfig(values, device="cpu")
        completed = config.to_dict()
        to_configuration(space, completed)  # raises for a forbidden pair or a choice the space lacks
    except Exception:  # noqa: BLE001 - a starting point that does not fit this space is simply not used
        return None
    return completed


def calibrates(values: dict[str, Any]) -> bool:
    """Whether smashing ``values`` reads calibration data (the expensive kind of trial)."""
    from smashlib.config import SmashConfig

    config = SmashConfig(values, device="cpu")
    return any("data" in a.required_components(config.settings_for(a)) for a in config.chosen_algorithms())


def cost_rank(values: dict[str, Any]) -> tuple[int, int]:
    """Sort key, cheapest first: no calibration before calibration, no runtime group before one."""
    return (int(calibrates(values)), sum(1 for group in RUNTIME_GROUPS if group in values))


def first_batch(space: ConfigurationSpace, algorithms: list[Algorithm]) -> list[dict[str, Any]]:
    """Weight recipes to run first, cheapest first: the starting points, and the defaults of each
    algorithm that has none (a starting point stands for its algorithm: one trial each, not two)."""
    covered = {p[group] for p in STARTING_POINTS for group in p if group in space and group not in RUNTIME_GROUPS
               and group in {a.group for a in algorithms}}
    proposals = [{a.group: a.name} for a in algorithms if a.group not in RUNTIME_GROUPS and a.name not in covered]
    proposals += [dict(p) for p in STARTING_POINTS]
    batch: dict[str, dict[str, Any]] = {}
    for proposal in proposals:
        completed = _completed(space, proposal)
        if completed is not None:
            batch.setdefault(config_key(completed), completed)
    return sorted(batch.values(), key=cost_rank)  # sorted() is stable: the order above breaks ties


#: Runtime settings measured in docs/cpu_recipe.md, tried before the runtime algorithms' defaults: the
#: compiled decoding step (prefill left eager) decodes about as fast as the compiled forward for 8-bit
#: GPTQ, and is at full speed in a quarter of the warm-up time.
RUNTIME_STARTING_POINTS: tuple[dict[str, Any], ...] = (
    {"compiler": "torch_compile", "torch_compile_target": "decode"},
)


def runtime_variants(space: ConfigurationSpace, values: dict[str, Any]) -> list[dict[str, Any]]:
    """``values`` with each runtime starting point, then each runtime algorithm of the space at its
    defaults, added (where allowed)."""
    variants = []
    for extra in RUNTIME_STARTING_POINTS:
        if any(group in values for group in extra if group in RUNTIME_GROUPS):
            continue
        completed = _completed(space, {**values, **extra})
        if completed is not None:
            variants.append(completed)
    for algorithm in registry.algorithms().values():
        if algorithm.group not in RUNTIME_GROUPS or algorithm.group in values:
            continue
        if algorithm.name not in space[algorithm.group].choices:
            continue
        completed = _completed(space, {**values, algorithm.group: algorithm.name})
        if completed is not None:
            variants.append(completed)
    return variants
