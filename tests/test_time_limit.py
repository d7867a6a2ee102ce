"""smashlib.time_limit: long steps stop at the limit of the enclosing block, through progress() and by hand."""
from __future__ import annotations

import time

import pytest

from smashlib.errors import SmashError
from smashlib.progress import progress
from smashlib.time_limit import TimeLimitReached, check_time_limit, time_left, time_limit


def test_without_a_limit_items_pass_unchanged_and_checks_never_raise():
    items = [1, 2, 3]
    assert progress(items, desc="x", disable=True) is items
    assert time_left() is None
    check_time_limit("anything")


@pytest.mark.parametrize("shown", [False, True])
def test_progress_stops_at_the_first_item_past_the_limit(shown):
    seen = []
    with time_limit(time.time() + 3600):
        bar = progress(range(5), desc="gptq blocks", disable=not shown)
        for item in bar:
            seen.append(item)
            if shown:
                bar.set_postfix(loss="1.0")  # the bar's own methods pass through the check
    assert seen == [0, 1, 2, 3, 4]
    seen.clear()
    with pytest.raises(TimeLimitReached, match="before gptq blocks") as caught, time_limit(time.time() + 0.2):
        for item in progress(range(5), desc="gptq blocks", disable=not shown):
            seen.append(item)
            if item == 1:
                time.sleep(0.3)  # the step in flight finishes; the next one is not started
    assert seen == [0, 1] and caught.value.step == "before gptq blocks"
    assert isinstance(caught.value, SmashError) and time_left() is None  # the limit ends with its block


def test_a_nested_later_limit_does_not_extend_the_outer_one():
    with time_limit(time.time() - 1), time_limit(time.time() + 3600), pytest.raises(TimeLimitReached):
        check_time_limit("step")


def test_quiet_hides_bars_inside_and_smash_verbose_false_is_quiet(capsys):
    from smashlib import SmashConfig, smash
    from smashlib.progress import quiet
    from tests.tiny_models import build_tiny, tiny_tokenizer

    with quiet():
        assert progress([1, 2], desc="hidden") == [1, 2]  # no bar object: the items themselves
    assert not isinstance(progress([1, 2], desc="shown"), list)  # a bar
    config = SmashConfig({"quantizer": "gptq", "gptq_calibration_samples": 8, "gptq_sequence_length": 128}, device="cpu")
    config.add_tokenizer(tiny_tokenizer())
    config.add_data("PydocTopics")
    model = build_tiny("llama")
    model.model.layers.extend([type(model.model.layers[0])(model.config, 0) for _ in range(6)])  # 8 blocks: a bar
    model.config.num_hidden_layers = 8
    smash(model, config, verbose=False)
    assert "gptq blocks" not in capsys.readouterr().err


def test_an_evaluation_past_the_limit_raises_instead_of_reporting_a_failed_metric():
    """compare() records a failing metric and goes on; the caller's deadline is not a metric failing."""
    from smashlib.evaluation import evaluate_models, prepare_inputs
    from tests.tiny_models import build_tiny, tiny_inputs

    inputs = prepare_inputs([tiny_inputs("llama")])
    models = {"base": build_tiny("llama"), "other": build_tiny("llama")}
    with time_limit(time.time() - 1), pytest.raises(TimeLimitReached):
        evaluate_models(models, inputs, ["latency"], verbose=False)
