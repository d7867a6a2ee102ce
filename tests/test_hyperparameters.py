"""smashlib.hyperparameters: kinds by ConfigSpace class, Python types out, one value in, flags' text parsed."""
from __future__ import annotations

import numpy as np
import pytest
from ConfigSpace import Categorical, Constant, Float, Integer, Normal
from ConfigSpace import OrdinalHyperparameter as Ordinal
from ConfigSpace.hyperparameters import CategoricalHyperparameter

from smashlib import HyperparameterValueError, hyperparameters


def test_numpy_scalars_become_pythons_own_types():
    for value, kind in ((np.str_("int8"), str), (np.int64(4), int), (np.float32(0.5), float), (np.bool_(True), bool)):
        converted = hyperparameters.python_value(value)
        assert type(converted) is kind, (value, type(converted))


def test_kinds_are_recognised_by_class_not_by_name():
    class IntegerChoices(CategoricalHyperparameter):  # a name that sniffing "Integer" in the class name gets wrong
        pass

    assert hyperparameters.kind(IntegerChoices("x", ["a", "b"])) == "categorical"
    assert hyperparameters.kind(Integer("x", (1, 9), distribution=Normal(5, 1))) == "integer"
    assert hyperparameters.kind(Float("x", (0.0, 1.0))) == "float"
    assert hyperparameters.kind(Ordinal("x", ["s", "m", "l"])) == "ordinal"
    assert hyperparameters.kind(Constant("x", "on")) == "constant"
    # a categorical of numbers is not coerced as if it were an integer range
    assert hyperparameters.coerce(IntegerChoices("x", [1.0, 2.5]), 1.0) == 1.0


def test_allowed_values_and_descriptions():
    assert hyperparameters.allowed(Categorical("x", ["a", "b"])) == ["a", "b"]
    assert all(type(v) is str for v in hyperparameters.allowed(Categorical("x", ["a", "b"])))
    assert hyperparameters.allowed(Integer("x", (1, 9))) == [1, 9]
    assert hyperparameters.describe_allowed(Float("x", (0.0, 1.0))) == "between 0.0 and 1.0"
    assert hyperparameters.describe_allowed(Categorical("x", ["a", "b"])) == "one of 'a', 'b'"
    assert hyperparameters.describe(Integer("x", (1, 9), default=3)) == "from 1 to 9; default 3"


@pytest.mark.parametrize(
    ("hyperparameter", "value"),
    [
        (Float("s", (0.0, 1.0)), [0.3]),  # ConfigSpace's legal_value says array([True])
        (Float("s", (0.0, 1.0)), [0.3, 0.4]),  # ConfigSpace raises numpy's ValueError
        (Float("s", (0.0, 1.0)), np.array([0.3])),
        (Categorical("d", ["bfloat16", "float16"]), ["bfloat16"]),
        (Categorical("d", ["bfloat16", "float16"]), ("bfloat16",)),
        (Integer("n", (1, 9)), {4}),
        (Integer("n", (1, 9)), {"value": 4}),
    ],
)
def test_containers_are_refused_with_one_clear_error(hyperparameter, value):
    with pytest.raises(HyperparameterValueError, match="give one value") as raised:
        hyperparameters.checked_value("key_name", hyperparameter, value)
    assert "key_name" in str(raised.value)


def test_single_element_list_error_shows_the_fix():
    with pytest.raises(HyperparameterValueError, match=r"e.g. cfg\['s'\] = 0.3"):
        hyperparameters.checked_value("s", Float("s", (0.0, 1.0)), [0.3])


def test_checked_value_coerces_and_checks():
    assert type(hyperparameters.checked_value("n", Integer("n", (1, 9)), 4.0)) is int
    assert type(hyperparameters.checked_value("s", Float("s", (0.0, 1.0)), 1)) is float
    assert type(hyperparameters.checked_value("d", Categorical("d", ["a", "b"]), np.str_("a"))) is str
    with pytest.raises(HyperparameterValueError, match="between 0.0 and 1.0"):
        hyperparameters.checked_value("s", Float("s", (0.0, 1.0)), 2.0)


def test_flag_text_is_parsed_to_the_hyperparameters_type():
    assert hyperparameters.parse_text(Categorical("x", [None, True, False]), "False") is False
    assert hyperparameters.parse_text(Ordinal("x", [2, 4, 8]), "4") == 4
    assert hyperparameters.parse_text(Constant("x", "on"), "on") == "on"
    with pytest.raises(ValueError, match="not a whole number"):
        hyperparameters.parse_text(Integer("x", (1, 9)), "2.5")
