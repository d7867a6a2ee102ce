"""Finds every algorithm and builds the one ConfigSpace space that SmashConfig is backed by.

Algorithms come from the modules of ``smashlib.algorithms`` (the repository's top-level
``algorithms/`` folder) and from the ``smashlib.algorithms`` entry point group, so another package can
add an algorithm without touching smashlib. Discovery imports only the algorithm modules, which import
their heavy packages lazily.
"""
from __future__ import annotations

import copy
import importlib
import importlib.metadata
import inspect
import pkgutil
import warnings
from functools import lru_cache
from typing import Any

from ConfigSpace import (
    Categorical,
    ConfigurationSpace,
    EqualsCondition,
    ForbiddenAndConjunction,
    ForbiddenEqualsClause,
)

from smashlib import hyperparameters
from smashlib.algorithm import COMPONENT_NAMES, GROUP_ORDER, Algorithm
from smashlib.errors import UnknownNameError, did_you_mean

ENTRY_POINT_GROUP = "smashlib.algorithms"
#: The value a group takes when no algorithm of it is chosen. ConfigSpace accepts None as a choice.
NO_ALGORITHM = None


def _algorithm_classes_in(module: Any) -> list[type[Algorithm]]:
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Algorithm) and obj is not Algorithm and obj.name and obj.__module__ == module.__name__
    ]


def _discover() -> list[type[Algorithm]]:
    package = importlib.import_module("smashlib.algorithms")
    found: list[type[Algorithm]] = []
    for info in pkgutil.walk_packages(package.__path__, prefix="smashlib.algorithms."):
        if info.ispkg:
            continue
        found.extend(_algorithm_classes_in(importlib.import_module(info.name)))
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry_point.load()
        except Exception as error:  # noqa: BLE001 - a broken plugin, whatever it raises, must not break smashlib
            warnings.warn(f"smashlib: could not load algorithm entry point '{entry_point.name}': {error}", stacklevel=2)
            continue
        found.extend(_algorithm_classes_in(loaded) if inspect.ismodule(loaded) else [loaded])
    return found


@lru_cache(maxsize=1)
def algorithms() -> dict[str, Algorithm]:
    """Every registered algorithm by name, one instance each, sorted by group order then name."""
    by_name: dict[str, Algorithm] = {}
    for cls in _discover():
        if cls.group not in GROUP_ORDER:
            raise ValueError(f"algorithm '{cls.name}' declares unknown group '{cls.group}'; groups: {GROUP_ORDER}")
        if cls.name in by_name and type(by_name[cls.name]) is not cls:
            raise ValueError(f"two algorithms are named '{cls.name}': {type(by_name[cls.name])} and {cls}")
        by_name[cls.name] = cls()
    ordered = sorted(by_name.values(), key=lambda a: (GROUP_ORDER.index(a.group), a.name))
    return {a.name: a for a in ordered}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``, or UnknownNameError suggesting the closest name."""
    registered = algorithms()
    if name not in registered:
        raise UnknownNameError(
            f"unknown algorithm '{name}'.{did_you_mean(name, registered)} Known algorithms: {', '.join(registered)}."
        )
    return registered[name]


def algorithms_in_group(group: str) -> list[str]:
    return [a.name for a in algorithms().values() if a.group == group]


def prefixed(algorithm: Algorithm, hyperparameter: Any) -> Any:
    """A copy of ``hyperparameter`` named ``<algorithm>_<name>``: names are unique across the space."""
    renamed = copy.deepcopy(hyperparameter)
    # ConfigSpace hyperparameters have no rename API; the name is a plain field not used in any cache
    object.__setattr__(renamed, "name", f"{algorithm.name}_{hyperparameter.name}")
    return renamed


@lru_cache(maxsize=1)
def configuration_space() -> ConfigurationSpace:
    """The space of every valid SmashConfig: a categorical per group, conditional hyperparameters,
    forbidden clauses for incompatible pairs. Public, so search methods can sample from it."""
    space = ConfigurationSpace(name="smashlib")
    for group in GROUP_ORDER:
        space.add(Categorical(group, [NO_ALGORITHM, *algorithms_in_group(group)], default=NO_ALGORITHM))
    for algorithm in algorithms().values():
        for hyperparameter in algorithm.hyperparameters:
            named = prefixed(algorithm, hyperparameter)
            space.add(named)
            space.add(EqualsCondition(space[named.name], space[algorithm.group], algorithm.name))
    seen: set[frozenset[str]] = set()
    for algorithm in algorithms().values():
        for other_name in algorithm.incompatible_with:
            other = algorithms().get(other_name)
            pair = frozenset({algorithm.name, other_name})
            if other is None or pair in seen:
                continue  # naming an algorithm that is not installed is allowed: nothing to forbid
            seen.add(pair)
            space.add(
                ForbiddenAndConjunction(
                    ForbiddenEqualsClause(space[algorithm.group], algorithm.name),
                    ForbiddenEqualsClause(space[other.group], other.name),
                )
            )
    return space


def incompatible_pair(a: str, b: str) -> bool:
    """Whether algorithms ``a`` and ``b`` are declared incompatible (by either side)."""
    registered = algorithms()
    return b in registered[a].incompatible_with or a in registered[b].incompatible_with


def algorithms_table() -> list[dict[str, Any]]:
    """One row per algorithm: what `smashlib algorithms` prints and the docs' table is built from."""
    rows = []
    for algorithm in algorithms().values():
        rows.append(
            {
                "name": algorithm.name,
                "group": algorithm.group,
                "runs_on": list(algorithm.runs_on),
                "requires": list(algorithm.required_components(default_settings(algorithm))),
                "requires_when": conditional_requirements(algorithm),
                "needs": describe_needs(algorithm),
                "needs_packages": list(algorithm.needs_packages),
                "available": not algorithm.missing_packages(),
                "incompatible_with": list(algorithm.incompatible_with),
                "hyperparameters": {
                    f"{algorithm.name}_{hp.name}": {"default": hyperparameters.default(hp), "allowed": hyperparameters.allowed(hp)}
                    for hp in algorithm.hyperparameters
                },
                "summary": algorithm.summary,
            }
        )
    return rows


def default_settings(algorithm: Algorithm) -> dict[str, Any]:
    """The algorithm's settings (unprefixed) when nothing is set: what smash() reads for a fresh choice."""
    return {hp.name: hyperparameters.default(hp) for hp in algorithm.hyperparameters}


def conditional_requirements(algorithm: Algorithm) -> dict[str, list[str]]:
    """Components whose need depends on a setting: ``{"data": ["smoothquant=True"]}`` for one needed only
    then, ``{"data": ["not with method=rtn"]}`` for one a setting removes. Asks ``required_components`` for
    each choice of each categorical hyperparameter (the others at their defaults)."""
    defaults = default_settings(algorithm)
    base = set(algorithm.required_components(defaults))
    notes: dict[str, list[str]] = {}
    for hyperparameter in algorithm.hyperparameters:
        for choice in hyperparameters.choices(hyperparameter) or []:
            if choice == defaults[hyperparameter.name]:
                continue
            needed = set(algorithm.required_components({**defaults, hyperparameter.name: choice}))
            for component in sorted(needed - base):
                notes.setdefault(component, []).append(f"{hyperparameter.name}={choice}")
            for component in sorted(base - needed):
                notes.setdefault(component, []).append(f"not with {hyperparameter.name}={choice}")
    return notes


def describe_needs(algorithm: Algorithm) -> str:
    """The components an algorithm needs, with the settings that change it, e.g. 'tokenizer, data (with
    smoothquant=True)' or 'tokenizer, data (not with method=rtn)': the "needs" of the algorithms table."""
    base = algorithm.required_components(default_settings(algorithm))
    notes = conditional_requirements(algorithm)
    ordered = [c for c in COMPONENT_NAMES if c in base or c in notes]
    by_condition: dict[str, list[str]] = {}
    for component in ordered:
        if component in base and component not in notes:
            by_condition.setdefault("", []).append(component)
        else:
            prefix = "" if component in base else "with "
            by_condition.setdefault(prefix + " or ".join(notes[component]), []).append(component)
    return ", ".join(
        ", ".join(components) + (f" ({condition})" if condition else "") for condition, components in by_condition.items()
    )


def refresh() -> None:
    """Forget discovered algorithms and the built space (after installing a plugin at run time)."""
    algorithms.cache_clear()
    configuration_space.cache_clear()
