"""The benchmark script (benchmarks/quantizers.py): its recipes stay valid configs, and regenerating its
Markdown keeps the hand-written analysis. The measurements themselves are not tests: run the script."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quantizers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_quantizers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_recipe_is_a_valid_config_here(bench):
    """A recipe naming a renamed algorithm or hyperparameter would silently drop out of the table."""
    reasons = {label: bench.skip_reason(recipe) for label, recipe in bench.RECIPES}
    assert {label: reason for label, reason in reasons.items() if reason} == {}
    assert bench.RECIPES[0] == ("fp32", {})  # the reference of every ratio


def test_regenerating_keeps_the_hand_written_analysis(bench):
    previous = f"# old table\n| a |\n\n{bench.HAND_WRITTEN}\n## Reading the table\nwritten by people\n"
    text = bench.with_kept_analysis("# new table\n| b |\n", previous)
    assert text.startswith("# new table\n| b |\n") and "old table" not in text
    assert text.endswith(f"{bench.HAND_WRITTEN}\n## Reading the table\nwritten by people\n")
    assert bench.with_kept_analysis("# new table\n", "# no marker\n") == "# new table\n"
