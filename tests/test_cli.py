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
        (["smash", "m", "--quantizer", "half"], 2, "nothing to do"),
        (["algorithms", "--group", "bogus"], 2, "Groups: distiller, pruner, quantizer"),
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
    assert code == 2 and "--data NAME" in err  # the command line is wrong, not the work
    assert_one_line_error(err)


def test_no_algorithm_chosen_is_an_error(capsys, model_folder, tmp_path):
    code, _, err = run(capsys, "smash", str(model_folder), "--out", str(tmp_path / "out"))
    assert code == 2 and "no algorithm chosen" in err  # bad input, as the docs say


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

    # the demo's own recipe, bounded for CI: fewer calibration windows, and not compiled (compiling the real
    # model takes minutes on 2 cores; gptq + torch_compile is tested on tiny models)
    recipe = {key: value for key, value in demo.DEMO_RECIPE.items() if not key.startswith(("compiler", "torch_compile"))}
    bounded = {"DEMO_SAMPLES": 2, "DEMO_TOKENS": 32, "DEMO_NEW_TOKENS": 3, "DEMO_ROUNDS": 1,
               "DEMO_RECIPE": {**recipe, "gptq_calibration_samples": 8}}
    for name, value in bounded.items():
        monkeypatch.setattr(demo, name, value)
    status, printed, _ = run(capsys, "demo", "--quiet", "--json")
    report = json.loads(printed)
    assert status == 0 and report["models"] == ["fp32", "smashed"]
    values = report["values"]["smashed"]
    for key in ("weights_memory_mb", "latency_p50_ms", "decode_tokens_per_s", "perplexity", "top1_agreement"):
        assert values[key] is not None, key
    assert report["ratios"]["smashed"]["weights_memory_mb"] < 0.3  # int8 weights


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


# ====================================================================== hostile and odd folders (issue 11, items 2 and 9)
def _copy_model(model_folder, tmp_path, name="copy"):
    import shutil

    folder = tmp_path / name
    shutil.copytree(model_folder, folder)
    return folder


@pytest.fixture
def auto_map_folder(model_folder, tmp_path):
    """A model folder whose config.json asks transformers to import the folder's own Python file."""
    folder = _copy_model(model_folder, tmp_path, "remote-code")
    marker = tmp_path / "the-folder-code-ran"
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


@pytest.mark.parametrize("command", ["smash", "compare"])
def test_auto_map_code_never_runs_and_nothing_is_asked(auto_map_folder, tmp_path, command):
    folder, marker = auto_map_folder
    argv = (["smash", str(folder), "--quantizer", "half", "--out", str(tmp_path / "out")] if command == "smash"
            else ["compare", str(folder), str(folder), "--metrics", "size"])
    # a real process with 'y' on stdin: transformers' own question would read it and run the code
    done = subprocess.run([sys.executable, "-m", "smashlib.cli", *argv, "--quiet"], input="y\ny\n",
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 1, done.stderr
    assert not marker.exists()
    assert "--trust-remote-code" in done.stderr and "auto_map" in done.stderr
    assert done.stdout == ""  # no question printed
    assert_one_line_error(done.stderr)


def test_trust_remote_code_is_a_flag_and_passes_through(auto_map_folder, monkeypatch, capsys, tmp_path):
    from smashlib import cli

    folder, _ = auto_map_folder
    assert cli.check_local_folder(folder, trust_remote_code=True)["auto_map"]
    seen = {}

    def fake_load(path, device=None, trust_remote_code=False):
        seen["trust"] = trust_remote_code
        raise cli.ModelFolderError("stop here")

    monkeypatch.setattr(cli, "load_plain_model", fake_load)
    code, _, err = run(capsys, "smash", str(folder), "--quantizer", "half", "--out", str(tmp_path / "o"),
                       "--trust-remote-code", "--quiet")
    assert code == 1 and seen == {"trust": True} and "stop here" in err


@pytest.mark.parametrize("command", ["smash", "compare", "info"])
def test_a_folder_without_config_json_is_one_line(tmp_path, capsys, command):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    argv = {"smash": ["smash", str(folder), "--quantizer", "half", "--out", str(tmp_path / "o")],
            "compare": ["compare", str(folder), str(folder)], "info": ["info", str(folder)]}[command]
    code, _, err = run(capsys, *argv, "--quiet")
    assert code == 1 and "config.json" in err
    assert_one_line_error(err)


@pytest.mark.parametrize("command", ["smash", "compare"])
def test_pickle_weights_are_refused_in_one_line(model_folder, tmp_path, capsys, command):
    import torch
    from safetensors.torch import load_file

    folder = _copy_model(model_folder, tmp_path, "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    argv = (["smash", str(folder), "--quantizer", "half", "--out", str(tmp_path / "o")] if command == "smash"
            else ["compare", str(folder), str(folder)])
    code, _, err = run(capsys, *argv, "--quiet")
    assert code == 1 and "pytorch_model.bin" in err and "safetensors" in err
    assert_one_line_error(err)


def _fake_manifest(folder, saved_model):
    folder.mkdir()
    (folder / "smash_config.json").write_text(json.dumps(
        {"schema_version": 2, "smashlib_version": "0.1.0", "device": "cpu", "values": {}, "components": {},
         "saved_model": saved_model}
    ))


@pytest.mark.parametrize(
    "saved_model",
    [
        {"schema_version": 1, "algorithms": ["half", "torch_compile"]},
        {"schema_version": 1, "algorithms": {"half": 1}, "model": [], "weights": "x", "versions": 3, "report": []},
        {"schema_version": 1, "algorithms": [{"name": 1, "settings": [1, 2]}, None]},
    ],
)
def test_info_on_a_manifest_of_the_wrong_shapes_never_prints_a_traceback(tmp_path, capsys, saved_model):
    folder = tmp_path / "odd"
    _fake_manifest(folder, saved_model)
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "info", str(folder), *extra)
        assert "Traceback" not in err
        if code:
            assert code == 1
            assert_one_line_error(err)
        else:
            assert out.strip()


@pytest.mark.parametrize("name", ["smash_config.json", "config.json"])
def test_info_on_deeply_nested_json_is_one_line(tmp_path, capsys, name):
    folder = tmp_path / "deep"
    folder.mkdir()
    (folder / name).write_text('{"saved_model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, _, err = run(capsys, "info", str(folder))
    assert code == 1
    assert_one_line_error(err)


def test_info_json_output_of_a_nested_manifest_is_one_line(tmp_path, capsys):
    folder = tmp_path / "nested"
    _fake_manifest(folder, {"schema_version": 1, "model": json.loads("[" * 900 + "]" * 900)})
    code, _, err = run(capsys, "info", str(folder), "--json")
    assert "Traceback" not in err
    if code:
        assert_one_line_error(err)


def test_algorithms_needs_column_follows_the_settings(capsys):
    status, out, _ = run(capsys, "algorithms", "--group", "quantizer")
    line = next(line for line in out.splitlines() if " torch_dynamic " in f" {line} ")
    assert status == 0 and "data (with smoothquant=True)" in line


@needs_save_load
def test_smash_of_a_folder_without_a_tokenizer_saves_none(tmp_path, capsys):
    folder = tmp_path / "gpt2-no-tokenizer"
    build_tiny("gpt2").save_pretrained(folder)
    out = tmp_path / "smashed"
    code, _, err = run(capsys, "smash", str(folder), "--quantizer", "half", "--out", str(out), "--quiet")
    assert code == 0, err
    saved = sorted(p.name for p in out.iterdir())
    assert not [name for name in saved if "token" in name or "vocab" in name or "merges" in name], saved
    assert "tokenizer" not in json.loads((out / "smash_config.json").read_text())["components"]


def test_a_bad_tokenizer_flag_is_one_line(model_folder, tmp_path, capsys):
    code, _, err = run(capsys, "smash", str(model_folder), "--quantizer", "half", "--out", str(tmp_path / "o"),
                       "--tokenizer", "some-owner/some-tokenizer", "--quiet")
    assert code == 2 and "offline" in err and "local folder" in err
    assert_one_line_error(err)
