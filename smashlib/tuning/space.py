"""The space tune() searches: the SmashConfig's own ConfigSpace space, cut down to what may run here.

The registry's space (:func:`smashlib.registry.configuration_space`) holds every installed algorithm.
A search should not spend trials on algorithms the user excluded, nor on ones that cannot run on this
device (a missing package, CUDA only): each would only fail. So the space is rebuilt from the same
registry data with those algorithms left out of their group's categorical; conditions and forbidden
clauses are kept for the algorithms that remain, so SMAC never proposes an incompatible pair.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ConfigSpace import (
    Categorical,
    Configuration,
    ConfigurationSpace,
    EqualsCondition,
    ForbiddenAndConjunction,
    ForbiddenEqualsClause,
)

from smashlib import registry
from smashlib.algorithm import GROUP_ORDER, Algorithm
from smashlib.errors import SmashError, UnknownNameError, did_you_mean


def _expand(names: Iterable[str] | None, what: str) -> set[str] | None:
    """Algorithm names from a mix of algorithm and group names (None stays None: no restriction)."""
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    known = registry.algorithms()
    chosen: set[str] = set()
    for name in names:
        if name in GROUP_ORDER:
            chosen.update(registry.algorithms_in_group(name))
        elif name in known:
            chosen.add(name)
        else:
            raise UnknownNameError(
                f"{what}: unknown algorithm or group '{name}'.{did_you_mean(name, [*known, *GROUP_ORDER])} "
                f"Algorithms: {', '.join(known)}; groups: {', '.join(GROUP_ORDER)}."
            )
    return chosen


#: Groups searched only when ``include=`` names them (or one of their algorithms): distillers and recoverers
#: train for minutes per trial, batchers and cachers change how calls are served (many callers, shared
#: prompts, long contexts) rather than the speed of one call, which is what tune() measures.
OPT_IN_GROUPS = ("distiller", "recoverer", "cacher", "batcher")


def why_not_here(algorithm: Algorithm, device: str) -> str | None:
    """The reason ``algorithm`` cannot run on ``device`` on this machine, or None when it can."""
    try:
        algorithm.validate_environment(device)
    except SmashError as error:
        return str(error)
    return None


def candidate_algorithms(
    include: Iterable[str] | None, exclude: Iterable[str] | None, device: str
) -> tuple[list[Algorithm], dict[str, str]]:
    """(algorithms the search may use, {algorithm left out: why})."""
    included = _expand(include, "include")
    excluded = _expand(exclude, "exclude") or set()
    kept: list[Algorithm] = []
    left_out: dict[str, str] = {}
    for algorithm in registry.algorithms().values():
        if included is not None and algorithm.name not in included:
            left_out[algorithm.name] = "not in include="
        elif algorithm.name in excluded:
            left_out[algorithm.name] = "in exclude="
        elif included is None and algorithm.group in OPT_IN_GROUPS:
            left_out[algorithm.name] = f"a {algorithm.group}: searched only when include= names it"
        elif (reason := why_not_here(algorithm, device)) is not None:
            left_out[algorithm.name] = reason
        else:
            kept.append(algorithm)
    if not kept:
        raise SmashError(
            "tune: no algorithm is left to search: " + "; ".join(f"{n}: {r}" for n, r in left_out.items())
            + ". Widen include= or install the missing packages."
        )
    return kept, left_out


def restricted_space(algorithms: list[Algorithm], seed: int = 0) -> ConfigurationSpace:
    """The registry's space with only ``algorithms`` as choices (hyperparameters, conditions, forbiddens kept)."""
    full = registry.configuration_space()
    space = ConfigurationSpace(name="smashlib-tune", seed=seed)
    names = {a.name for a in algorithms}
    for group in GROUP_ORDER:
        choices = [registry.NO_ALGORITHM, *(a.name for a in algorithms if a.group == group)]
        space.add(Categorical(group, choices, default=registry.NO_ALGORITHM))
    for algorithm in algorithms:
        for hyperparameter in algorithm.hyperparameters:
            named = full[f"{algorithm.name}_{hyperparameter.name}"]
            space.add(named)
            space.add(EqualsCondition(space[named.name], space[algorithm.group], algorithm.name))
    seen: set[frozenset[str]] = set()
    for algorithm in algorithms:
        for other_name in algorithm.incompatible_with:
            pair = frozenset({algorithm.name, other_name})
            if other_name not in names or pair in seen:
                continue
            seen.add(pair)
            other = registry.get_algorithm(other_name)
            space.add(
                ForbiddenAndConjunction(
                    ForbiddenEqualsClause(space[algorithm.group], algorithm.name),
                    ForbiddenEqualsClause(space[other.group], other.name),
                )
            )
    return space


def active_values(configuration: Configuration | dict[str, Any]) -> dict[str, Any]:
    """The chosen groups and their hyperparameters as plain Python: what a SmashConfig is built from."""
    from smashlib.config import plain

    # None is "no algorithm" for a group (dropped), but a legal value of a hyperparameter (kept:
    # torch_compile_dynamic=None is its default, and an active hyperparameter must have a value)
    return {key: plain(value) for key, value in dict(configuration).items()
            if plain(value) is not None or key not in GROUP_ORDER}


def to_configuration(space: ConfigurationSpace, values: dict[str, Any]) -> Configuration:
    """``values`` (active keys only, as a SmashConfig holds them) as a Configuration of ``space``."""
    full = {group: registry.NO_ALGORITHM for group in GROUP_ORDER}
    full.update(values)
    return Configuration(space, values=full)


def config_key(values: dict[str, Any]) -> str:
    """One string per distinct recipe, so a log and a search recognise a recipe already tried."""
    import json

    return json.dumps(values, sort_keys=True, default=str)
