"""What smashlib needs to know about a ConfigSpace hyperparameter, in one place.

ConfigSpace hands back numpy scalars (``np.str_``, ``np.int64``, ``np.bool_``), accepts a one-element
list as legal (its ``legal_value`` is vectorised and answers ``array([True])``), and names allowed values
differently per class (``choices``, ``sequence``, ``lower``/``upper``, ``value``). The config, the
registry's table and the command line all ask the same questions, so they ask them here: what kind a
hyperparameter is (by its ConfigSpace class), what values it allows, how to turn a user's value or a
flag's text into its own Python type, and whether a value is legal.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from ConfigSpace.hyperparameters import (
    CategoricalHyperparameter,
    Constant,
    FloatHyperparameter,
    Hyperparameter,
    IntegerHyperparameter,
    OrdinalHyperparameter,
)

from smashlib.errors import HyperparameterValueError

#: The kinds smashlib tells apart, by ConfigSpace class (checked in this order: subclasses first).
KINDS: tuple[tuple[str, type], ...] = (
    ("categorical", CategoricalHyperparameter),
    ("ordinal", OrdinalHyperparameter),
    ("integer", IntegerHyperparameter),
    ("float", FloatHyperparameter),
    ("constant", Constant),
)


def python_value(value: Any) -> Any:
    """``value`` as Python's own type: numpy scalars (np.str_ too, which is a str) become str/int/float/bool."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def kind(hyperparameter: Hyperparameter) -> str:
    """'categorical', 'ordinal', 'integer', 'float' or 'constant'."""
    for name, cls in KINDS:
        if isinstance(hyperparameter, cls):
            return name
    raise TypeError(f"smashlib does not handle ConfigSpace {type(hyperparameter).__name__} hyperparameters")


def choices(hyperparameter: Hyperparameter) -> list[Any] | None:
    """The allowed values of a categorical or ordinal hyperparameter (Python types), else None."""
    if isinstance(hyperparameter, CategoricalHyperparameter):
        return [python_value(c) for c in hyperparameter.choices]
    if isinstance(hyperparameter, OrdinalHyperparameter):
        return [python_value(c) for c in hyperparameter.sequence]
    if isinstance(hyperparameter, Constant):
        return [python_value(hyperparameter.value)]
    return None


def default(hyperparameter: Hyperparameter) -> Any:
    return python_value(hyperparameter.default_value)


def allowed(hyperparameter: Hyperparameter) -> list[Any]:
    """The choices, or ``[lower, upper]`` for a numeric range (what the algorithms table shows)."""
    listed = choices(hyperparameter)
    if listed is not None:
        return listed
    return [python_value(hyperparameter.lower), python_value(hyperparameter.upper)]


def describe_allowed(hyperparameter: Hyperparameter) -> str:
    """'one of 'a', 'b'' or 'between 0.0 and 1.0': the end of an error message or a flag's help."""
    if isinstance(hyperparameter, Constant):
        return f"the constant {python_value(hyperparameter.value)!r}"
    listed = choices(hyperparameter)
    if listed is not None:
        return "one of " + ", ".join(repr(c) for c in listed)
    return f"between {python_value(hyperparameter.lower)} and {python_value(hyperparameter.upper)}"


def coerce(hyperparameter: Hyperparameter, value: Any) -> Any:
    """Accept what a user naturally writes (4 for 4.0, numpy scalars) without accepting nonsense."""
    value = python_value(value)
    if isinstance(value, bool):
        return value
    if isinstance(hyperparameter, IntegerHyperparameter) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(hyperparameter, FloatHyperparameter) and isinstance(value, int):
        return float(value)
    return value


def checked_value(key: str, hyperparameter: Hyperparameter, value: Any) -> Any:
    """``value`` coerced to the hyperparameter's type, or HyperparameterValueError naming ``key`` and the choices.

    Containers are refused before ConfigSpace sees them: its vectorised ``legal_value`` would call
    ``[0.3]`` legal (``array([True])``) and fail on longer lists with numpy's own ValueError.
    """
    if isinstance(value, (list, tuple, set, frozenset, Mapping, np.ndarray)):
        example = _single_example(value)
        hint = f" (e.g. cfg['{key}'] = {example!r})" if example is not None else ""
        raise HyperparameterValueError(
            f"{key} = {value!r} is a {type(value).__name__}: give one value{hint}, "
            f"{describe_allowed(hyperparameter)}."
        )
    value = coerce(hyperparameter, value)
    try:
        legal = bool(np.all(hyperparameter.legal_value(value)))
    except (TypeError, ValueError):
        legal = False
    if not legal:
        raise HyperparameterValueError(f"{key} = {value!r} is not allowed: use {describe_allowed(hyperparameter)}.")
    return value


def _single_example(value: Any) -> Any:
    if isinstance(value, (Mapping, set, frozenset)):
        return None
    items = list(value.tolist() if isinstance(value, np.ndarray) else value)
    return python_value(items[0]) if len(items) == 1 else None


def parse_text(hyperparameter: Hyperparameter, text: str) -> Any:
    """The text of a command-line flag as the hyperparameter's own type; ValueError with the reason otherwise."""
    listed = choices(hyperparameter)
    if listed is not None:
        for choice in listed:
            if text == str(choice) or text.lower() == str(choice).lower():
                return choice
        raise ValueError(f"{text!r} is not one of {', '.join(str(c) for c in listed)}")
    number_kind = kind(hyperparameter)
    try:
        return int(text) if number_kind == "integer" else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a {'whole number' if number_kind == 'integer' else 'number'}") from None


def describe(hyperparameter: Hyperparameter) -> str:
    """The help of a hyperparameter's flag: what is allowed and the default."""
    if isinstance(hyperparameter, Constant):
        allowed_text = f"always {python_value(hyperparameter.value)}"
    elif choices(hyperparameter) is not None:
        allowed_text = "one of " + ", ".join(str(c) for c in choices(hyperparameter))
    else:
        allowed_text = f"from {python_value(hyperparameter.lower)} to {python_value(hyperparameter.upper)}"
    return f"{allowed_text}; default {default(hyperparameter)}"
