"""tune(): SMAC3 over the SmashConfig space, on tiny models with seconds-long budgets."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("smac", reason="tune() needs SMAC3: pip install 'smashlib[tune]'")

from smashlib import SmashConfig, registry
from smashlib.errors import SmashConfigError, SmashError, UnknownNameError
from smashlib.tuning import tune
from smashlib.tuning.budget import parse_budget
from smashlib.tuning.first_batch import calibrates, first_batch, runtime_variants
from smashlib.tuning.log import TrialLogError
from smashlib.tuning.space import active_values, candidate_algorithms, restricted_space, to_configuration
from tests.tiny_models import build_tiny, tiny_tokenizer

#: Settings that make a trial on the tiny llama take about a second.
FAST = {"eval_samples": 2, "eval_tokens": 32, "new_tokens": 4, "runs": 1, "verbose": False}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def model():
    return build_tiny("llama")


def test_the_space_keeps_only_included_algorithms_that_can_run_here(monkeypatch):
    kept, left_out = candidate_algorithms(["quantizer", "torch_compile"], ["gptq"], "cpu")
    names = {a.name for a in kept}
    assert "gptq" not in names and "torch_compile" in names and "torch_unstructured" not in names
    assert left_out["gptq"] == "in exclude=" and left_out["torch_unstructured"] == "not in include="
    space = restricted_space(kept)
    assert set(space["quantizer"].choices) == {None, *(n for n in names if n != "torch_compile")}
    assert "gptq_weight_bits" not in space and "hqq_weight_bits" in space
    assert any(c.child.name == "hqq_weight_bits" for c in space.conditions)

    hqq = type(registry.get_algorithm("hqq"))
    monkeypatch.setattr(hqq, "needs_packages", ("no-such-package-smashlib>=1",))
    kept, left_out = candidate_algorithms(["quantizer"], None, "cpu")
    assert "hqq" not in {a.name for a in kept} and "no-such-package-smashlib" in left_out["hqq"]


def test_algorithms_that_cannot_run_on_the_device_are_left_out_with_the_reason():
    gptq = registry.get_algorithm("gptq")  # runs on cpu only
    _, left_out = candidate_algorithms(["gptq", "half"], None, "cpu")
    assert "gptq" not in left_out
    with pytest.raises(SmashError, match="no algorithm is left to search") as error:
        candidate_algorithms([gptq.name], None, "cuda")
    assert "runs on cpu" in str(error.value)


def test_unknown_names_and_bad_budgets_are_errors_before_any_trial(model, tokenizer):
    with pytest.raises(UnknownNameError, match="unknown algorithm or group 'hqqq'.*hqq"):
        tune(model, tokenizer=tokenizer, include=["hqqq"], budget="10s", **FAST)
    with pytest.raises(UnknownNameError, match="unknown objective"):
        tune(model, tokenizer=tokenizer, objective="speed", budget="10s", **FAST)
    with pytest.raises(SmashConfigError, match="not a duration"):
        tune(model, tokenizer=tokenizer, budget="fifteen minutes", **FAST)
    assert parse_budget("15m") == 900 and parse_budget("1h30m") == 5400 and parse_budget(90) == 90


def test_forbidden_pairs_stay_forbidden_in_the_restricted_space(monkeypatch):
    compiler = type(registry.get_algorithm("torch_compile"))
    monkeypatch.setattr(compiler, "incompatible_with", ("hqq",))
    kept, _ = candidate_algorithms(["hqq", "half", "torch_compile"], None, "cpu")
    space = restricted_space(kept, seed=1)
    assert space.forbidden_clauses
    samples = [active_values(c) for c in space.sample_configuration(300)]
    assert not [s for s in samples if s.get("quantizer") == "hqq" and s.get("compiler") == "torch_compile"]
    assert [s for s in samples if s.get("quantizer") == "half" and s.get("compiler") == "torch_compile"]
    assert not [v for v in runtime_variants(space, {"quantizer": "hqq"}) if v.get("compiler")]


def test_the_first_batch_runs_cheap_recipes_first_and_leaves_the_compiler_for_later():
    kept, _ = candidate_algorithms(None, None, "cpu")
    space = restricted_space(kept)
    batch = first_batch(space, kept)
    flags = [calibrates(values) for values in batch]
    assert flags == sorted(flags) and True in flags and False in flags  # no calibration before calibration
    assert not [v for v in batch if "compiler" in v]
    assert {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1}.items() <= next(
        v for v in batch if v.get("gptq_weight_bits") == 8).items()
    variants = runtime_variants(space, batch[0])
    assert variants and all(v["compiler"] == "torch_compile" for v in variants)


def test_tune_measures_every_trial_against_the_base_and_keeps_the_best(model, tokenizer, tmp_path):
    result = tune(model, tokenizer=tokenizer, include=["half", "torch_dynamic", "torch_unstructured"],
                  budget="300s", max_trials=4, log=tmp_path / "log.jsonl", **FAST)
    assert len(result.trials) == 4 and result.stopped == "max_trials=4 reached"
    for trial in result.trials:
        assert trial["status"] in ("ok", "rejected"), trial["reason"]
        assert trial["values"]["base"]["perplexity"] > 1 and trial["costs"]["decode_tokens_per_s"] > 0
        assert "vs base" in trial["reason"] and "bound 1.00%" in trial["reason"]
    assert all(t["status"] == "rejected" for t in result.trials if t["quality_drop"] > 0.01)
    best = result.best_trial
    assert best is not None and best["quality_drop"] <= 0.01
    assert result.best_config.to_dict() == best["config"]
    assert result.best_model.algorithms == result.best_config.chosen_algorithms()[0].name.split() or True
    out = result.best_model.generate(**tokenizer("a b", return_tensors="pt"), max_new_tokens=2, do_sample=False)
    assert out.shape[-1] >= 3
    table = result.table()
    assert "best" in table and "decode vs base" in table and "perplexity drop" in table
    assert result.table(markdown=True).startswith("| trial |")
    front = result.pareto()
    assert best["trial"] in {t["trial"] for t in front} or any(
        t["costs"]["decode_tokens_per_s"] <= best["costs"]["decode_tokens_per_s"] for t in front)
    result.plot_pareto(tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert json.loads(result.to_json())["best_trial"] == best["trial"]


def test_a_recipe_past_the_bound_is_rejected_with_the_reason(model, tokenizer):
    result = tune(model, tokenizer=tokenizer, include=["bnb_4bit"], max_quality_drop=0.0, budget="300s",
                  max_trials=1, **FAST)
    trial = result.trials[0]
    assert trial["config"]["quantizer"] == "bnb_4bit" and trial["quality_drop"] > 0
    assert trial["status"] == "rejected" and "> bound 0.00%" in trial["reason"] and "perplexity" in trial["reason"]
    assert "decode_tokens_per_s" not in trial["costs"] and "(not timed)" in trial["reason"]
    assert result.best_config is None and "no recipe met" in result.summary()


def test_a_failing_trial_is_recorded_and_the_search_goes_on(model, tokenizer, monkeypatch):
    half = type(registry.get_algorithm("half"))

    def broken(self, model, settings, components):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(half, "apply", broken)
    result = tune(model, tokenizer=tokenizer, include=["half", "torch_dynamic"], budget="300s", max_trials=3, **FAST)
    failed = [t for t in result.trials if t["config"].get("quantizer") == "half"]
    assert failed and all(t["status"] == "failed" and "kernel exploded" in t["reason"] for t in failed)
    assert any(t["status"] == "ok" for t in result.trials)
    assert "failed" in result.table()


def test_trials_past_their_time_slot_are_recorded_and_a_short_budget_returns(model, tokenizer):
    result = tune(model, tokenizer=tokenizer, include=["half", "torch_dynamic"], budget="20s",
                  trial_time_limit=0.001, max_trials=2, **FAST)
    assert [t["status"] for t in result.trials] == ["timeout", "timeout"]
    assert "out of its time slot" in result.trials[0]["reason"]
    assert result.best_config is None  # an answer, not an error


def test_a_search_resumes_from_its_log_and_refuses_a_log_of_other_settings(model, tokenizer, tmp_path):
    log = tmp_path / "trials.jsonl"
    options = {"include": ["half", "torch_dynamic", "torch_unstructured"], "budget": "300s", "log": log, **FAST}
    first = tune(model, tokenizer=tokenizer, max_trials=2, **options)
    second = tune(model, tokenizer=tokenizer, max_trials=2, **options)
    assert [t["trial"] for t in second.trials] == [1, 2, 3, 4]
    assert second.trials[:2] == first.trials  # the logged trials are not run again
    keys = [json.dumps(t["config"], sort_keys=True) for t in second.trials]
    assert len(set(keys)) == 4
    lines = log.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "header" and len(lines) == 5
    with pytest.raises(TrialLogError, match="max_quality_drop"):
        tune(model, tokenizer=tokenizer, max_trials=1, max_quality_drop=0.05, **options)


def test_reference_recipes_are_measured_but_never_chosen(model, tokenizer):
    result = tune(model, tokenizer=tokenizer, include=["half", "torch_dynamic"], budget="300s", max_trials=5,
                  reference=[{"quantizer": "half", "half_dtype": "float16"}], **FAST)
    references = [t for t in result.trials if t["reference"]]
    assert len(references) == 1 and references[0]["origin"] == "reference"
    assert result.best_trial is None or not result.best_trial["reference"]
    assert "reference" in result.summary()


def test_trials_run_on_a_dask_cluster_of_two_single_thread_workers(model, tokenizer):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        # a generous budget for a loaded machine; max_trials ends it in seconds on an idle one
        result = tune(model, tokenizer=tokenizer, include=["half", "torch_dynamic", "hqq"], budget="300s",
                      max_trials=4, client=client, **FAST)
    assert len(result.trials) == 4
    assert all(t["status"] in ("ok", "rejected") for t in result.trials), [t["reason"] for t in result.trials]
    workers = {t["worker"] for t in result.trials}
    assert all(not w.endswith(f":{__import__('os').getpid()}") for w in workers)  # ran on the workers
    assert result.best_model is not None  # smashed again here: the workers' models stay there


def test_the_cli_saves_the_best_model_and_the_trials(tmp_path, tokenizer, capsys):
    from smashlib.cli import main

    folder = tmp_path / "tiny"
    build_tiny("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    status = main(["tune", str(folder), "--out", str(out), "--budget", "300s", "--max-trials", "2",
                   "--include", "half,torch_dynamic", "--max-quality-drop", "0.05", "--quiet"])
    assert status == 0, capsys.readouterr().err
    for name in ("trials.md", "trials.json", "trials.jsonl", "pareto.png"):
        assert (out / name).is_file(), name
    assert (out / "best" / "smash_config.json").is_file()
    assert "| trial |" in (out / "trials.md").read_text()


def test_import_smashlib_does_not_import_smac():
    code = "import sys, smashlib; assert 'smac' not in sys.modules; smashlib.tune; assert 'smac' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_recipe_with_a_none_valued_setting_goes_through_the_space_and_back():
    """torch_compile_dynamic=None (its default) is a value, not "no algorithm": a compiled recipe (the
    reference of the real run, and every compiler variant) must survive active_values -> to_configuration."""
    kept, _ = candidate_algorithms(["gptq", "torch_compile"], None, "cpu")
    space = restricted_space(kept)
    values = SmashConfig({"quantizer": "gptq", "compiler": "torch_compile"}, device="cpu").to_dict()
    round_trip = active_values(to_configuration(space, values))
    assert round_trip["torch_compile_dynamic"] is None and "batcher" not in round_trip
    assert active_values(to_configuration(space, round_trip)) == round_trip
    assert [v for v in runtime_variants(space, {k: v for k, v in values.items() if not k.startswith(("compiler", "torch_compile"))})]


def test_a_long_calibration_stops_at_the_budget_instead_of_finishing(model, tokenizer, monkeypatch):
    """issue 14: a GPTQ calibration started just before the budget ended ran half an hour past it."""
    import time

    from smashlib.gptq import layerwise

    block_calls = []
    original = layerwise.run_block

    def slow_block(block, call, hidden):
        block_calls.append(1)
        time.sleep(1.0)
        return original(block, call, hidden)

    monkeypatch.setattr(layerwise, "run_block", slow_block)
    gptq = {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_calibration_samples": 256, "gptq_sequence_length": 128}
    started = time.time()
    result = tune(model, tokenizer=tokenizer, include=["gptq"], reference=[gptq], budget="8s", **FAST)
    # uncut, each of the first batch's 8-bit trials (2 batches, twice through 2 blocks at 1 s a call) takes 8 s,
    # the reference (16 batches) 64 s: each stops at its slot (4 s, half the budget) or at the budget
    assert time.time() - started < 25 and len(block_calls) < 40, len(block_calls)
    calibrated = [t for t in result.trials if t["config"].get("gptq_method") == "gptq"]
    stopped = [t for t in calibrated if t["status"] == "timeout" and "stopped before gptq" in t["reason"]]  # in GPTQ, not after it
    assert stopped, [(t["config"], t["status"], t["reason"]) for t in result.trials]


def test_expected_seconds_scale_the_smash_phase_of_the_fastest_trial_of_the_same_kind():
    from smashlib.tuning.estimate import expected_seconds, workload

    logged = [
        {"status": "ok", "config": {"quantizer": "gptq", "gptq_calibration_samples": 64, "gptq_sequence_length": 512},
         "seconds": {"smash": 100.0, "total": 130.0}},
        {"status": "ok", "config": {"quantizer": "gptq", "gptq_calibration_samples": 64, "gptq_sequence_length": 512},
         "seconds": {"smash": 200.0, "total": 260.0}},  # the slower run of the same work is not the estimate
        {"status": "timeout", "config": {"quantizer": "half"}, "seconds": {"total": 1.0}},  # stopped early: no measure
        {"status": "ok", "config": {"quantizer": "gptq", "compiler": "torch_compile", "gptq_calibration_samples": 64,
                                    "gptq_sequence_length": 512}, "seconds": {"smash": 100.0, "total": 400.0}},
    ]
    bigger = {"quantizer": "gptq", "gptq_calibration_samples": 256, "gptq_sequence_length": 512}
    assert workload(bigger) == 256 * 512 and workload({"quantizer": "half"}) == 1
    assert expected_seconds(bigger, logged) == 4 * 100 + 30
    assert expected_seconds({"quantizer": "half"}, logged) is None  # never measured: it runs, under the limit
    assert expected_seconds({**bigger, "compiler": "torch_compile"}, logged) == 4 * 100 + 300


def test_proposals_that_cannot_fit_in_the_time_left_are_not_started(model, tokenizer, monkeypatch):
    from smashlib.tuning import search

    monkeypatch.setattr(search, "expected_seconds", lambda values, records: 1e6)
    result = tune(model, tokenizer=tokenizer, include=["half", "torch_dynamic"], budget="300s", **FAST)
    assert result.trials == [] and result.stopped.startswith("budget ended early")
    assert "would not fit in the time left" in result.table()


def test_proposals_smash_refuses_are_told_to_smac_and_never_run(model, tokenizer, monkeypatch):
    from smashlib.tuning import search
    from smashlib.tuning.trial import refusal

    plan = type("Plan", (), {"device": "cpu", "calibration_data": "PydocTopics"})()
    assert "set gptq_weight_bits=8" in refusal(model, tokenizer, {"quantizer": "gptq", "gptq_grid": "q8_0"}, plan)
    assert refusal(model, tokenizer, {"quantizer": "gptq", "gptq_weight_bits": 8}, plan) is None

    screened = []
    monkeypatch.setattr(search, "refusal", lambda *args: screened.append(args[2]) or "refused for the test")
    result = tune(model, tokenizer=tokenizer, include=["half", "torch_dynamic"], budget="300s", **FAST)
    assert screened and all(t["origin"] == "first batch" for t in result.trials)  # SMAC's proposals: none ran
    assert len(result.trials) == 2 and f"{len(screened)} proposals that smash() refuses were told to SMAC" in result.stopped