"""save_pretrained / from_pretrained: exact round trips, compressed on disk, clear errors, atomic saves."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from smashlib import (
    MissingPackageError,
    SmashConfig,
    SmashedModel,
    SmashedModelLoadError,
    SmashError,
    UnsupportedDeviceError,
    registry,
    serialization,
    smash,
)
from tests.folders import edit_manifest
from tests.tiny_models import build_tiny, tiny_inputs, tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Settings that keep a test fast without changing what is tested (the round trip): a compiler that
#: traces but does not generate C++ (Inductor takes tens of seconds per compile on two cores), short
#: calibration sequences. Every hyperparameter named `calibration_samples` also gets its lower bound.
FAST_SETTINGS = {
    "torch_compile_backend": "eager", "gptq_sequence_length": 128,
    "depth_distiller_steps": 3, "depth_distiller_batch_size": 1, "depth_distiller_sequence_length": 128,
    "lora_recoverer_steps": 3, "lora_recoverer_batch_size": 1, "lora_recoverer_sequence_length": 128,
}


def tensors_of(output) -> list[torch.Tensor]:
    """The tensors of a model output (logits, hidden states...), in a fixed order, caches left out."""
    if isinstance(output, torch.Tensor):
        return [output]
    values = output.values() if hasattr(output, "values") else output
    return [v for v in values if isinstance(v, torch.Tensor)]


def run(model, name: str) -> list[torch.Tensor]:
    with torch.no_grad():
        return tensors_of(model(**tiny_inputs(name)))


def assert_same(before: list[torch.Tensor], after: list[torch.Tensor]) -> None:
    assert len(before) == len(after) > 0
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), f"max difference {(a.float() - b.float()).abs().max().item()}"


def smashed_tiny(name: str, values: dict, **components) -> SmashedModel:
    config = SmashConfig(values, device="cpu")
    if components.get("tokenizer") is not None:
        config.add_tokenizer(components["tokenizer"])
    if components.get("data") is not None:
        config.add_data(components["data"])
    return smash(build_tiny(name), config, verbose=False)


# ====================================================================== exact round trips
@pytest.mark.parametrize("values", [
    {"quantizer": "torch_dynamic"},
    {"quantizer": "half"},
    {"pruner": "torch_unstructured", "torch_unstructured_sparsity": 0.5, "quantizer": "torch_dynamic",
     "torch_dynamic_target_modules": "all_linear"},
], ids=["torch_dynamic", "half", "pruned+int8"])
def test_round_trip_is_exact_on_every_architecture(tiny_model_name, values, tmp_path):
    if tiny_model_name == "gpt2" and "pruner" in values:
        pytest.skip("GPT-2 has Conv1D layers, not nn.Linear: torch_unstructured refuses it (tested there)")
    smashed = smashed_tiny(tiny_model_name, values)
    before = run(smashed, tiny_model_name)
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert_same(before, run(loaded, tiny_model_name))
    assert loaded.algorithms == smashed.algorithms
    assert loaded.smash_config.to_dict() == smashed.smash_config.to_dict()
    assert [type(m).__name__ for m in loaded.model.modules()] == [type(m).__name__ for m in smashed.model.modules()]
    assert not loaded.model.training


def registered_algorithms() -> list[str]:
    return list(registry.algorithms())


@pytest.mark.parametrize("name", registered_algorithms())
def test_every_registered_algorithm_round_trips(name, tmp_path, pydoc_texts):
    """smash -> save -> load -> the same outputs, for every algorithm the registry knows (new ones included)."""
    algorithm = registry.get_algorithm(name)
    missing = algorithm.missing_packages()
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}")
    if "cpu" not in algorithm.runs_on:
        pytest.skip(f"{name} runs on {', '.join(algorithm.runs_on)} only; this test runs on the CPU")
    config = SmashConfig(device="cpu")
    config[algorithm.group] = name
    for key, value in FAST_SETTINGS.items():
        if key.startswith(name + "_"):
            config[key] = value
    for hyperparameter in algorithm.hyperparameters:
        if hyperparameter.name == "calibration_samples":
            config[f"{name}_calibration_samples"] = hyperparameter.lower
    if "tokenizer" in algorithm.requires:
        config.add_tokenizer(tiny_tokenizer())
    if "data" in algorithm.requires:
        config.add_data(pydoc_texts[:40])
    if "processor" in algorithm.requires:
        pytest.skip(f"{name} needs a processor; the tiny models here have none")
    model = build_tiny("llama")
    try:
        algorithm.check_model(model)
        algorithm.check_settings(config.settings_for(algorithm), "cpu")
    except SmashError as error:  # e.g. a kernel this CPU lacks: the algorithm says why
        pytest.skip(f"{name} cannot run here: {error}")
    smashed = smash(model, config, verbose=False)
    before = run(smashed, "llama")
    smashed.save_pretrained(tmp_path / name)
    loaded = SmashedModel.from_pretrained(tmp_path / name)
    assert_same(before, run(loaded, "llama"))
    assert_same(before, run(smashed, "llama"))  # saving changed nothing in the saved model either
    if name == "torch_compile":
        assert loaded.model._compiled_call_impl is not None  # a runtime algorithm is applied again at load


def test_pruner_then_quantizer_restore_in_order(tmp_path):
    smashed = smashed_tiny("llama", {"pruner": "torch_unstructured", "torch_unstructured_sparsity": 0.5,
                                     "quantizer": "half"})
    before = run(smashed, "llama")
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert_same(before, run(loaded, "llama"))
    assert loaded.algorithms == ["torch_unstructured", "half"]
    assert (loaded.model.model.layers[0].mlp.up_proj.weight == 0).float().mean() >= 0.5


def test_generate_after_loading_matches(tmp_path):
    smashed = smashed_tiny("llama", {"quantizer": "torch_dynamic"})
    prompt = tiny_inputs("llama", batch=1)
    expected = smashed.generate(**prompt, max_new_tokens=6, do_sample=False)
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(loaded.generate(**prompt, max_new_tokens=6, do_sample=False), expected)


def test_tied_weights_are_tied_again_and_stored_once(tmp_path):
    smashed = smashed_tiny("t5", {"pruner": "torch_unstructured"})
    smashed.save_pretrained(tmp_path / "saved")
    stored = load_file(tmp_path / "saved" / "model.safetensors")
    assert "shared.weight" in stored and "lm_head.weight" not in stored and "encoder.embed_tokens.weight" not in stored
    loaded = SmashedModel.from_pretrained(tmp_path / "saved").model
    assert loaded.lm_head.weight is loaded.shared.weight is loaded.encoder.embed_tokens.weight


def test_model_loaded_in_bfloat16_by_transformers_round_trips(tmp_path):
    """A base model that transformers loaded in bf16 (buffers created under that default dtype) stays exact."""
    import transformers

    build_tiny("llama").save_pretrained(tmp_path / "base")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16).eval()
    smashed = smash(base, SmashConfig({"pruner": "torch_unstructured"}, device="cpu"), verbose=False)
    before = run(smashed, "llama")
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert_same(before, run(loaded, "llama"))
    assert json.loads((tmp_path / "saved" / "smash_config.json").read_text())["saved_model"]["model"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("quantizer", ["torch_dynamic", "gptq", "hqq", "bnb_4bit", "torchao", "quanto", "llm_int8"])
def test_model_cast_to_bfloat16_round_trips(quantizer, tmp_path):
    """model.to(torch.bfloat16) leaves config.dtype unset and casts the rotary frequencies, which the saved
    weights do not hold: the folder records both (a tied int8 embedding once came back computing in float32)."""
    algorithm = registry.get_algorithm(quantizer)
    if algorithm.missing_packages():
        pytest.skip(f"{quantizer} needs {algorithm.missing_packages()}")
    model = build_tiny("llama").to(torch.bfloat16)
    values = {"quantizer": quantizer}
    if quantizer == "gptq":
        values.update(gptq_method="rtn", gptq_target_modules="all_linear")
    smashed = smash(model, SmashConfig(values, device="cpu"), verbose=False)
    before = run(smashed, "llama")
    smashed.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["dtype"] == "bfloat16"
    assert smashed.model.config.dtype is None  # the user's model's config is not changed by saving
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert loaded.model.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    assert_same(before, run(loaded, "llama"))


# ====================================================================== the folder
def test_folder_holds_compressed_weights_configs_tokenizer_and_smash_config(tmp_path):
    tokenizer = tiny_tokenizer()
    smashed = smashed_tiny("llama", {"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear"},
                           tokenizer=tokenizer)
    smashed.save_pretrained(tmp_path / "int8")
    smash(build_tiny("llama"), SmashConfig(device="cpu"), verbose=False).save_pretrained(tmp_path / "fp32")
    folder = tmp_path / "int8"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "smash_config.json", "tokenizer.json"} <= names
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no staging leftovers

    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        weight = handle.get_tensor("model.layers.0.mlp.up_proj.weight")
        metadata = handle.metadata()
    assert weight.dtype == torch.int8  # stored compressed, not de-quantized
    owners = json.loads(metadata["smashlib.owners"])
    assert "model.layers.0.mlp.up_proj.weight_scale" in owners["torch_dynamic"]
    # the embedding tied to the output head is quantized with it, so it is torch_dynamic's too
    assert "model.embed_tokens.weight_scale" in owners["torch_dynamic"]
    weights_ratio = (folder / "model.safetensors").stat().st_size / (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert weights_ratio < 0.5  # the tiny model's fp32 embedding weighs more than a real one's

    manifest = json.loads((folder / "smash_config.json").read_text())
    saved = manifest["saved_model"]
    assert saved["schema_version"] == serialization.FORMAT_VERSION
    assert saved["algorithms"] == [{"name": "torch_dynamic", "group": "quantizer", "restored": "from the weights",
                                    "settings": smashed.smash_config.settings_for("torch_dynamic")}]
    assert saved["algorithms"][0]["settings"]["target_modules"] == "all_linear"
    assert {"smashlib", "torch", "transformers"} <= set(saved["versions"])
    assert saved["model"]["class"] == "LlamaForCausalLM" and saved["model"]["dtype"] == "float32"
    assert manifest["components"]["tokenizer"]
    # smash_config.json is also a SmashConfig file
    assert SmashConfig.load_json(folder / "smash_config.json").to_dict() == smashed.smash_config.to_dict()

    loaded = SmashedModel.from_pretrained(folder)
    text = "def main(): return 42"
    assert loaded.smash_config.components.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.smash_config.components.descriptions == smashed.smash_config.components.descriptions


def test_plain_torch_module_loads_into_the_model_given(tmp_path):
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()

    smashed = smash(net(), SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear"},
                                       device="cpu"), verbose=False)
    x = torch.randn(3, 16)
    expected = smashed(x)
    smashed.save_pretrained(tmp_path / "saved")
    with pytest.raises(SmashedModelLoadError, match="model=") as error:
        SmashedModel.from_pretrained(tmp_path / "saved")
    assert "Sequential" in str(error.value)
    with torch.device("meta"):
        skeleton = net()  # weights do not matter: they are replaced
    loaded = SmashedModel.from_pretrained(tmp_path / "saved", model=skeleton)
    assert torch.equal(loaded(x), expected)


# ====================================================================== clear errors
@pytest.fixture(scope="module")
def saved_int8(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "int8"
    smashed_tiny("llama", {"quantizer": "torch_dynamic"}).save_pretrained(folder)
    return folder


@pytest.fixture
def copy_of(saved_int8, tmp_path):
    import shutil

    shutil.copytree(saved_int8, tmp_path / "copy")
    return tmp_path / "copy"


def test_newer_folder_format_is_refused(copy_of):
    edit_manifest(copy_of, lambda m: m["saved_model"].update(schema_version=serialization.FORMAT_VERSION + 1))
    with pytest.raises(SmashedModelLoadError, match="upgrade smashlib"):
        SmashedModel.from_pretrained(copy_of)


def test_unknown_algorithm_is_named(copy_of):
    edit_manifest(copy_of, lambda m: m["saved_model"]["algorithms"][0].update(name="quantum_squeeze"))
    with pytest.raises(SmashedModelLoadError, match="'quantum_squeeze'"):
        SmashedModel.from_pretrained(copy_of)


def test_missing_package_is_named(copy_of, monkeypatch):
    monkeypatch.setattr(type(registry.get_algorithm("torch_dynamic")), "needs_packages", ("fbgemm-magic>=9",))
    with pytest.raises(MissingPackageError, match="fbgemm-magic>=9"):
        SmashedModel.from_pretrained(copy_of)


def test_device_the_algorithm_cannot_run_on(copy_of):
    with pytest.raises(UnsupportedDeviceError, match="torch_dynamic.*device='cpu'"):
        SmashedModel.from_pretrained(copy_of, device="cuda")


def test_not_a_smashlib_folder(tmp_path):
    build_tiny("llama").save_pretrained(tmp_path / "plain")
    with pytest.raises(SmashedModelLoadError, match="not a model saved by smashlib.*plain transformers"):
        SmashedModel.from_pretrained(tmp_path / "plain")
    with pytest.raises(SmashedModelLoadError, match="no folder at"):
        SmashedModel.from_pretrained(tmp_path / "nowhere")


def test_damaged_manifest(copy_of):
    (copy_of / "smash_config.json").write_text('{"schema_version": 1, "values": ')
    with pytest.raises(SmashedModelLoadError, match="not valid JSON"):
        SmashedModel.from_pretrained(copy_of)


def test_missing_weights_file(copy_of):
    (copy_of / "model.safetensors").unlink()
    with pytest.raises(SmashedModelLoadError, match="model.safetensors is missing"):
        SmashedModel.from_pretrained(copy_of)


def test_corrupt_weights_are_caught_by_the_checksum(copy_of):
    path = copy_of / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte inside a tensor: safetensors alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(SmashedModelLoadError, match="corrupt"):
        SmashedModel.from_pretrained(copy_of)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_weights_without_checksum(copy_of, damage):
    path = copy_of / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(SmashedModelLoadError, match="not a readable safetensors file"):
        SmashedModel.from_pretrained(copy_of, verify_checksum=False)


def test_weights_that_do_not_fit_the_model(copy_of):
    path = copy_of / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight_scale"]
    tensors["model.layers.0.extra"] = torch.zeros(2)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(SmashedModelLoadError, match="do not fit.*up_proj.weight_scale.*model.layers.0.extra"):
        SmashedModel.from_pretrained(copy_of, verify_checksum=False)


def test_saving_refuses_to_replace_a_folder_of_other_files(tmp_path):
    smashed = smashed_tiny("llama", {"quantizer": "half"})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SmashError, match="holds other files"):
        smashed.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SmashError, match="is a file"):
        smashed.save_pretrained(tmp_path / "file")


def test_a_failing_save_leaves_the_old_folder(saved_int8, copy_of, monkeypatch):
    before = (copy_of / "model.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "_write_manifest", fail)
    with pytest.raises(SmashError, match=f"cannot write the saved model to {copy_of}: disk full"):
        smashed_tiny("llama", {"quantizer": "half"}).save_pretrained(copy_of)
    assert (copy_of / "model.safetensors").read_bytes() == before
    assert not [p for p in copy_of.parent.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    smashed_tiny("llama", {"quantizer": "half"}).save_pretrained(copy_of)  # replacing a saved folder is fine
    assert SmashedModel.from_pretrained(copy_of).algorithms == ["half"]


# ====================================================================== killed saves
#: A helper process that imports smashlib once, then, for each "<stage> <folder>" line it reads, forks
#: a process that saves a new model over the folder and stops at that moment of the save, where the
#: test kills it with SIGKILL. The moments are hooked by wrapping functions of smashlib's own modules
#: from outside (no test code in smashlib). Forking keeps the test fast: one import of torch, not one
#: per moment.
KILLED_SAVE = r"""
import os, signal, sys, time
from pathlib import Path
import torch
import safetensors.torch
from smashlib import SmashConfig, atomic, serialization, smash

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed children are reaped at once

def stop(stage):
    print(f"AT {stage} {os.getpid()}", flush=True)
    time.sleep(120)

def hook(stage, module, attribute, before=None, after=None):
    original = getattr(module, attribute)
    def wrapper(*args, **kwargs):
        if stage == before:
            stop(stage)
        result = original(*args, **kwargs)
        if stage == after:
            stop(stage)
        return result
    setattr(module, attribute, wrapper)

def save_and_stop(stage, target):
    hook(stage, serialization, "_write_weights", before="staging-created")
    hook(stage, atomic, "fsync_tree", after="flushed-before-swap")
    hook(stage, atomic, "swap_into_place", after="swapped-before-cleanup")
    if stage == "weights-half-written":
        def half_written(tensors, path, metadata=None):
            data = safetensors.torch.save(tensors, metadata=metadata)
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
            stop(stage)
        serialization.save_file = half_written
    if stage == "old-folder-half-deleted":
        def half_delete(path, ignore_errors=False):
            next(Path(path).iterdir()).unlink()
            stop(stage)
        atomic.shutil.rmtree = half_delete
    if stage == "fallback-between-renames":
        atomic.exchange_paths = None  # as on a system without renameat2
        real_rename = os.rename
        def rename(source, destination):
            real_rename(source, destination)
            stop(stage)  # the first rename put the old folder aside
        atomic.os.rename = rename
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8)).eval()
    smash(net, SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False).save_pretrained(target)
    print(f"DONE {stage} {os.getpid()}", flush=True)

print("READY", flush=True)
for line in sys.stdin:
    stage, target = line.split()
    if os.fork() == 0:
        try:
            save_and_stop(stage, target)
        finally:
            os._exit(0)
"""


def _kill_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8)).eval()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked processes with SIGKILL (POSIX)")
def test_a_killed_save_leaves_the_old_or_the_new_folder(tmp_path):
    """SIGKILL at each moment of a save: the folder always loads, as the old model or the new one."""
    x = torch.randn(2, 64)
    old = smash(_kill_net(0), SmashConfig({"quantizer": "torch_dynamic",
                                           "torch_dynamic_target_modules": "all_linear"}, device="cpu"), verbose=False)
    new = smash(_kill_net(1), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False)
    expected = {"old": old(x), "new": new(x)}
    # (moment, whether a saved folder was there before, which model the folder must hold after the kill)
    cases = [
        ("staging-created", True, "old"),
        ("weights-half-written", True, "old"),
        ("flushed-before-swap", True, "old"),
        ("swapped-before-cleanup", True, "new"),
        ("old-folder-half-deleted", True, "new"),
        ("fallback-between-renames", True, "old"),
        ("flushed-before-swap", False, None),  # first save killed: no folder at all, never a broken one
        ("swapped-before-cleanup", False, "new"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    helper = subprocess.Popen([sys.executable, "-c", KILLED_SAVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    try:
        assert helper.stdout.readline().strip() == "READY", helper.stderr.read()
        for index, (stage, has_old, holds) in enumerate(cases):
            target = tmp_path / f"case{index}" / "model"
            target.parent.mkdir()
            if has_old:
                old.save_pretrained(target)
            helper.stdin.write(f"{stage} {target}\n")
            helper.stdin.flush()
            line = helper.stdout.readline().split()
            assert line[:2] == ["AT", stage], f"{stage}: the save never reached it: {line}"
            pid = int(line[2])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not _process_gone(pid) and time.monotonic() < deadline:
                time.sleep(0.01)

            def skeleton():
                with torch.device("meta"):
                    return _kill_net(0)  # its weights do not matter: loading replaces them

            if holds is None:
                assert not target.exists(), stage
            else:
                loaded = SmashedModel.from_pretrained(target, model=skeleton())
                assert loaded.algorithms == (["half"] if holds == "new" else ["torch_dynamic"]), stage
                assert torch.equal(loaded(x), expected[holds]), stage
            # the next save finishes the job: leftovers of the killed save are gone
            new.save_pretrained(target)
            assert SmashedModel.from_pretrained(target, model=skeleton()).algorithms == ["half"]
            assert [p.name for p in target.parent.iterdir()] == ["model"], stage
    finally:
        helper.kill()
        helper.wait()


# ====================================================================== the real model
@pytest.mark.real_model
def test_smollm2_int8_round_trip_and_size(smollm2_path, tmp_path):
    """SmolLM2-135M with torch_dynamic: exact round trip, and the folder's size against the fp32 folder."""
    from transformers import AutoModelForCausalLM

    def folder_bytes(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())

    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    config = SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_but_output_head"}, device="cpu")
    config.add_tokenizer(smollm2_path)
    smashed = smash(model, config, verbose=False)
    inputs = config.components.tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    with torch.no_grad():
        expected = smashed(**inputs).logits
    started = time.perf_counter()
    smashed.save_pretrained(tmp_path / "int8")
    saved_in = time.perf_counter() - started
    started = time.perf_counter()
    loaded = SmashedModel.from_pretrained(tmp_path / "int8")
    loaded_in = time.perf_counter() - started
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
    ratio = folder_bytes(tmp_path / "int8") / folder_bytes(smollm2_path)
    print(f"\nSmolLM2-135M torch_dynamic(output_head) folder: {folder_bytes(tmp_path / 'int8') / 1e6:.1f} MB = "
          f"{ratio:.1%} of the fp32 folder ({folder_bytes(smollm2_path) / 1e6:.1f} MB); "
          f"save {saved_in:.1f} s, load {loaded_in:.1f} s")
    assert ratio <= 0.45


# ====================================================================== custom code
CUSTOM_MODEL = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel


class TinyCustomConfig(PretrainedConfig):
    model_type = "tiny-custom-smashlib-test"

    def __init__(self, hidden=16, **kwargs):
        self.hidden = hidden
        super().__init__(**kwargs)


class TinyCustomModel(PreTrainedModel):
    config_class = TinyCustomConfig

    def __init__(self, config):
        super().__init__(config)
        self.up = torch.nn.Linear(config.hidden, 4 * config.hidden)
        self.down = torch.nn.Linear(4 * config.hidden, config.hidden)
        self.post_init()

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))
'''


def test_custom_code_model_needs_trust_remote_code(tmp_path, monkeypatch):
    """A model whose code ships in the folder is rebuilt only when the user says trust_remote_code=True."""
    import importlib

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "modeling_tiny_custom.py").write_text(CUSTOM_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))  # also restores sys.path, which transformers extends
    monkeypatch.setattr("transformers.dynamic_module_utils.HF_MODULES_CACHE", str(tmp_path / "modules"))
    module = importlib.import_module("modeling_tiny_custom")
    module.TinyCustomConfig.register_for_auto_class()
    module.TinyCustomModel.register_for_auto_class("AutoModel")
    torch.manual_seed(0)
    model = module.TinyCustomModel(module.TinyCustomConfig()).eval()
    smashed = smash(model, SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear"},
                                       device="cpu"), verbose=False)
    x = torch.randn(2, 16)
    expected = smashed(x)
    smashed.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "modeling_tiny_custom.py").is_file()
    with pytest.raises(SmashedModelLoadError, match="trust_remote_code=True"):
        SmashedModel.from_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert type(loaded.model).__module__ != module.__name__  # built from the folder's copy of the code
    assert torch.equal(loaded(x), expected)


def test_processor_is_saved_and_reattached(tmp_path):
    import numpy as np
    import transformers

    processor = transformers.WhisperProcessor(
        feature_extractor=transformers.WhisperFeatureExtractor(feature_size=16), tokenizer=tiny_tokenizer()
    )
    config = SmashConfig({"quantizer": "torch_dynamic"}, device="cpu")
    config.add_processor(processor)
    smashed = smash(build_tiny("whisper"), config, verbose=False)
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    again = loaded.smash_config.components.processor
    assert type(again) is type(processor)
    audio = np.random.default_rng(0).standard_normal(16000).astype("float32")
    assert np.array_equal(again(audio, sampling_rate=16000)["input_features"],
                          processor(audio, sampling_rate=16000)["input_features"])


def test_shared_storage_is_stored_once_or_copied(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "b": base, "row": base[1], "empty1": torch.empty(0), "empty2": torch.empty(0), "t": base.t()}
    tensors, tied = serialization.split_shared(state)
    assert tied == {"b": "a"}
    assert set(tensors) == {"a", "row", "empty1", "empty2", "t"}
    assert torch.equal(tensors["row"], base[1]) and torch.equal(tensors["t"], base.t())
    assert tensors["t"].is_contiguous() and tensors["row"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    save_file(tensors, tmp_path / "w.safetensors")  # safetensors accepts them: no shared storage left


def test_saving_over_the_folder_it_was_loaded_from(saved_int8, copy_of):
    loaded = SmashedModel.from_pretrained(copy_of)
    before = run(loaded, "llama")
    loaded.save_pretrained(copy_of)
    assert_same(before, run(SmashedModel.from_pretrained(copy_of), "llama"))
    assert (copy_of / "model.safetensors").read_bytes() == (saved_int8 / "model.safetensors").read_bytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="loads onto a CUDA GPU; torch sees none here")
def test_saved_on_cpu_loaded_on_cuda(tmp_path):
    smashed = smashed_tiny("llama", {"quantizer": "half"})
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved", device="cuda")
    assert all(t.device.type == "cuda" for t in (*loaded.model.parameters(), *loaded.model.buffers()))
    inputs = {k: v.cuda() for k, v in tiny_inputs("llama").items()}
    reference = smashed.model.to("cuda")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, reference(**inputs).logits)
