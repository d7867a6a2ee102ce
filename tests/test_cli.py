"""The `smashlib` command: subcommands through main(argv) (and once through a real process), flags
generated from the registry, and one-line errors with the right exit status for bad arguments."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from ConfigSpace import Categorical, Float, Integer

from smashlib import SmashedModel
from smashlib.cli import main, value_parser
from tests.tiny_models import build_tiny, tiny_tokenizer

needs_save_load = pytest.mark.skipif(
    "save_pretrained" not in vars(SmashedModel), reason="SmashedModel.save_pretrained (smashlib.serialization) is missing"
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny Llama saved as a plain transformers folder, with its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


# ====================================================================== listing commands
def test_algorithms_table_and_json(capsys):
    status, out, _ = run(capsys, "algorithms")
    assert status == 0
    assert "torch_dynamic" in out and "target_modules=all_but_outlier_layers" in out and "devices" in out
    status, out, _ = run(capsys, "algorithms", "--json", "--group", "quantizer")
    rows = json.loads(out)
    assert status == 0 and {row["group"] for row in rows} == {"quantizer"}
    assert "half_dtype" in next(row for row in rows if row["name"] == "half")["hyperparameters"]


def test_metrics_json(capsys):
    status, out, _ = run(capsys, "--json", "metrics")
    assert status == 0 and {"perplexity", "latency", "agreement"} <= {row["name"] for row in json.loads(out)}


def test_smash_help_lists_every_group_and_hyperparameter(capsys):
    status, out, _ = run(capsys, "smash", "--help")
    assert status == 0
    for flag in ("--quantizer", "--pruner", "--compiler", "--torch-dynamic-target-modules", "--half-dtype",
                 "--torch-unstructured-sparsity", "--out"):
        assert flag in out
    assert "default all_but_outlier_layers" in " ".join(out.split())  # argparse wraps help lines


def test_values_are_parsed_to_the_hyperparameters_type():
    assert value_parser(Categorical("x", [True, False]))("false") is False
    assert value_parser(Categorical("x", [None, True, False]))("none") is None
    assert value_parser(Categorical("x", [4, 8, 2]))("8") == 8
    assert value_parser(Integer("x", (1, 10)))("7") == 7
    assert value_parser(Float("x", (0.0, 1.0)))("0.25") == 0.25
    with pytest.raises(argparse.ArgumentTypeError, match="not one of"):
        value_parser(Categorical("x", ["a", "b"]))("c")
    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        value_parser(Integer("x", (1, 10)))("seven")


# ====================================================================== bad arguments
@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        (["smash"], 2, "MODEL_DIR_OR_ID"),
        (["smash", "m", "--quantizer", "nope", "--out", "o"], 2, "invalid choice"),
        (["smash", "m", "--quantizer", "half", "--half-dtype", "float64", "--out", "o"], 2, "not one of"),
        (["smash", "m", "--half-dtype", "float16", "--out", "o"], 2, "inactive"),
        (["smash", "m", "--torch-unstructured-sparsity", "2", "--pruner", "torch_unstructured", "--out", "o"], 2, "not allowed"),
        (["smash", "m", "--quantizer", "half"], 1, "nothing to do"),
        (["frobnicate"], 2, "invalid choice"),
        (["info", "/nonexistent/folder"], 1, "no such folder"),
        (["compare", "/nonexistent/a", "/nonexistent/b", "--quiet"], 1, "/nonexistent/a: no such folder"),
    ],
)
def test_bad_arguments_end_with_one_line_and_a_status(capsys, argv, status, says):
    code, _, err = run(capsys, *argv)
    assert code == status
    assert_one_line_error(err)
    assert says in err


def test_an_algorithm_that_needs_data_asks_for_the_flag(capsys):
    from smashlib.registry import algorithms

    needing = [a for a in algorithms().values() if "data" in a.requires and not a.missing_packages() and "cpu" in a.runs_on]
    if not needing:
        pytest.skip("no installed algorithm needs calibration data")
    algorithm = needing[0]
    code, _, err = run(capsys, "smash", "m", f"--{algorithm.group}", algorithm.name, "--out", "o", "--device", "cpu")
    assert code == 1 and "--data NAME" in err
    assert_one_line_error(err)


def test_no_algorithm_chosen_is_an_error(capsys, model_folder, tmp_path):
    code, _, err = run(capsys, "smash", str(model_folder), "--out", str(tmp_path / "out"))
    assert code == 1 and "no algorithm chosen" in err


def test_console_script_runs_as_a_process():
    ok = subprocess.run([sys.executable, "-m", "smashlib.cli", "algorithms", "--json"], capture_output=True, text=True,
                        check=False)
    assert ok.returncode == 0 and json.loads(ok.stdout)
    bad = subprocess.run([sys.executable, "-m", "smashlib.cli", "smash", "x", "--quantizer", "nope"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


# ====================================================================== smash, info, compare on folders
@needs_save_load
def test_smash_info_compare_round_trip(capsys, model_folder, tmp_path):
    out = tmp_path / "smashed"
    status, printed, _ = run(capsys, "smash", str(model_folder), "--quantizer", "torch_dynamic",
                             "--torch-dynamic-target-modules", "all_linear", "--out", str(out), "--quiet")
    assert status == 0 and "saved to" in printed and (out / "smash_config.json").is_file()

    status, printed, _ = run(capsys, "info", str(out))
    assert status == 0 and "torch_dynamic" in printed and "target_modules='all_linear'" in printed
    status, printed, _ = run(capsys, "info", str(out), "--json")
    assert json.loads(printed)["smash_config"]["values"]["quantizer"] == "torch_dynamic"
    status, printed, _ = run(capsys, "info", str(model_folder))
    assert status == 0 and "not smashed" in printed and "LlamaForCausalLM" in printed

    chart = tmp_path / "chart.png"
    status, printed, _ = run(capsys, "compare", str(model_folder), str(out), "--metrics", "size,disk_size,perplexity,agreement",
                             "--samples", "2", "--tokens", "32", "--quiet", "--json", "--plot", str(chart))
    report = json.loads(printed)
    assert status == 0 and report["models"] == ["base", "smashed"]
    assert report["ratios"]["smashed"]["disk_weights_mb"] < 0.8
    assert report["values"]["smashed"]["top1_agreement"] > 0.5
    if chart.exists():  # matplotlib is optional
        assert chart.read_bytes()[:4] == b"\x89PNG"


def test_smash_with_report_prints_the_comparison(capsys, model_folder):
    status, printed, _ = run(capsys, "smash", str(model_folder), "--quantizer", "half", "--report", "--quiet")
    assert status == 0
    assert "smashlib report: base vs smashed" in printed and "perplexity" in printed


# ====================================================================== the demo
@pytest.mark.real_model
def test_demo_runs_end_to_end_on_the_real_model(capsys, smollm2_path, monkeypatch):
    from smashlib.evaluation import demo

    for name, value in {"DEMO_SAMPLES": 2, "DEMO_TOKENS": 32, "DEMO_NEW_TOKENS": 3, "DEMO_ROUNDS": 1}.items():
        monkeypatch.setattr(demo, name, value)
    status, printed, _ = run(capsys, "demo", "--quiet", "--json")
    report = json.loads(printed)
    assert status == 0 and report["models"] == ["fp32", "smashed"]
    values = report["values"]["smashed"]
    for key in ("weights_memory_mb", "latency_p50_ms", "decode_tokens_per_s", "perplexity", "top1_agreement"):
        assert values[key] is not None, key
    assert report["ratios"]["smashed"]["weights_memory_mb"] < 0.7


def test_dependency_noise_is_hidden_but_errors_are_not(capsys):
    """torchao (imported by transformers) warns about every CUDA extension it cannot load on a CPU
    machine; the command line keeps its output to progress, results and errors."""
    import logging

    from smashlib.cli import NOISY_LOGGERS

    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    before = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.NOTSET)
        status, _, _ = run(capsys, "metrics", "--quiet")
        assert status == 0
        assert not any(logger.isEnabledFor(logging.WARNING) for logger in loggers)
        assert all(logger.isEnabledFor(logging.ERROR) for logger in loggers)
    finally:
        for logger, level in zip(loggers, before):
            logger.setLevel(level)
