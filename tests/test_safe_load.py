"""The probes of issue 11 (a hostile folder, a careless user) against saving and loading, each a test.

Nothing lost (a folder is replaced only when it is provably a complete smashlib save), nothing read from
outside the folder, nothing unverified, a config that cannot drift from what was applied, exact fp32 round
trips, and a smashlib error (file, field, fix) for every malformed manifest field.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch

from smashlib import (
    SmashConfig,
    SmashConfigError,
    SmashedModel,
    SmashedModelLoadError,
    SmashError,
    registry,
    serialization,
    smash,
)
from smashlib.config import with_kept_in_float
from tests.folders import edit_manifest
from tests.tiny_models import build_tiny, tiny_inputs, tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


def smashed_tiny(name: str = "llama", values: dict | None = None, tokenizer: bool = False) -> SmashedModel:
    config = SmashConfig(values if values is not None else {"quantizer": "torch_dynamic"}, device="cpu")
    if tokenizer:
        config.add_tokenizer(tiny_tokenizer())
    return smash(build_tiny(name), config, verbose=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safe") / "int8"
    smashed_tiny(tokenizer=True).save_pretrained(folder)
    return folder


@pytest.fixture
def copy_of(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "copy")
    return tmp_path / "copy"


def logits(model, name: str = "llama") -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_inputs(name)).logits


# ====================================================================== 1. nothing lost
def test_a_folder_with_an_empty_smash_config_and_user_files_is_not_replaced(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "smash_config.json").write_text("")
    (folder / "train.py").write_text("print('mine')")
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    with pytest.raises(SmashError, match=rf"cannot save to {folder}.*smash_config.json, thesis.tex, train.py"):
        smashed_tiny().save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["smash_config.json", "thesis.tex", "train.py"]
    assert (folder / "train.py").read_text() == "print('mine')"


def test_files_a_user_added_to_a_saved_folder_are_not_deleted(copy_of):
    (copy_of / "notes.txt").write_text("keep me")
    (copy_of / "eval").mkdir()
    (copy_of / "eval" / "results.csv").write_text("ppl,12.3")
    with pytest.raises(SmashError, match=rf"cannot save to {copy_of}.*other files: eval/results.csv, notes.txt"):
        smashed_tiny().save_pretrained(copy_of)
    assert (copy_of / "notes.txt").read_text() == "keep me"
    assert (copy_of / "eval" / "results.csv").read_text() == "ppl,12.3"
    (copy_of / "eval" / "results.csv").unlink()
    with pytest.raises(SmashError, match="eval/"):  # an empty folder of the user's is theirs too
        smashed_tiny().save_pretrained(copy_of)


def test_an_incomplete_save_or_one_without_a_file_list_is_not_replaced(saved, copy_of, tmp_path):
    (copy_of / "config.json").unlink()
    with pytest.raises(SmashError, match="not a complete smashlib save.*missing config.json"):
        smashed_tiny().save_pretrained(copy_of)
    older = tmp_path / "older"
    shutil.copytree(saved, older)
    edit_manifest(older, lambda m: m["saved_model"].pop("contents"))
    with pytest.raises(SmashError, match="older smashlib that did not record which files"):
        smashed_tiny().save_pretrained(older)


def test_a_complete_save_is_replaced_and_lists_its_files(copy_of):
    smashed_tiny(values={"quantizer": "half"}).save_pretrained(copy_of)
    manifest = json.loads((copy_of / "smash_config.json").read_text())
    assert set(manifest["saved_model"]["contents"]) | {"smash_config.json"} == {p.name for p in copy_of.iterdir()}
    assert SmashedModel.from_pretrained(copy_of).algorithms == ["half"]


def test_saving_through_a_symlinked_folder_keeps_the_link(tmp_path):
    real = tmp_path / "disk" / "model"
    real.parent.mkdir()
    link = tmp_path / "model"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    smashed = smashed_tiny()
    smashed.save_pretrained(link)
    smashed.save_pretrained(link)  # a second save replaces the folder behind the link, not the link
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert torch.equal(logits(SmashedModel.from_pretrained(link)), logits(smashed))


# ====================================================================== 3. nothing read from outside, nothing unverified
@pytest.mark.parametrize("where", ["../../other/model.safetensors", "/etc/model.safetensors", "a/../../x", "~/x"])
def test_a_manifest_cannot_point_outside_the_folder(copy_of, tmp_path, where):
    (tmp_path / "other").mkdir()
    shutil.copy(copy_of / "model.safetensors", tmp_path / "other" / "model.safetensors")
    edit_manifest(copy_of, lambda m: m["saved_model"]["weights"].update(file=where))
    with pytest.raises(SmashedModelLoadError, match=r"field 'saved_model.weights.file'.*inside the folder"):
        SmashedModel.from_pretrained(copy_of)
    edit_manifest(copy_of, lambda m: m["saved_model"]["weights"].update(file="model.safetensors"))
    edit_manifest(copy_of, lambda m: m["saved_model"]["contents"].append(where))
    with pytest.raises(SmashedModelLoadError, match=r"field 'saved_model.contents\[\d+\]'"):
        SmashedModel.from_pretrained(copy_of)


def test_a_missing_checksum_or_weights_section_is_an_error(copy_of):
    edit_manifest(copy_of, lambda m: m["saved_model"]["weights"].pop("sha256"))
    with pytest.raises(SmashedModelLoadError, match=r"smash_config.json: field 'saved_model.weights.sha256' is missing"
                                                     r".*cannot be verified"):
        SmashedModel.from_pretrained(copy_of)
    edit_manifest(copy_of, lambda m: m["saved_model"].pop("weights"))
    with pytest.raises(SmashedModelLoadError, match=r"field 'saved_model.weights' is missing.*which file holds"):
        SmashedModel.from_pretrained(copy_of)


# ====================================================================== 6. the config a SmashedModel was made with
def test_a_smashed_model_keeps_its_own_frozen_copy_of_the_config(tmp_path):
    cfg = SmashConfig({"quantizer": "torch_dynamic"}, device="cpu")
    cfg.add_tokenizer(tiny_tokenizer())
    a = smash(build_tiny("llama"), cfg, verbose=False)
    cfg["quantizer"] = "half"
    assert a.algorithms == ["torch_dynamic"]
    a.save_pretrained(tmp_path / "a")
    loaded = SmashedModel.from_pretrained(tmp_path / "a")
    assert loaded.algorithms == ["torch_dynamic"]
    assert torch.equal(logits(loaded), logits(a))
    assert a.smash_config.components.tokenizer is cfg.components.tokenizer  # objects shared, not copied
    with pytest.raises(SmashConfigError, match="records what was applied"):
        a.smash_config["quantizer"] = "half"
    with pytest.raises(SmashConfigError, match="records what was applied"):
        a.smash_config.update({"quantizer": None})
    assert SmashConfig(a.smash_config.to_dict(), device="cpu")["quantizer"] == "torch_dynamic"  # the way to edit


# ====================================================================== 7. shapes refused before building layers
def test_a_config_json_that_disagrees_with_the_weights_is_refused_before_any_hook(copy_of, monkeypatch):
    path = copy_of / "config.json"
    config = json.loads(path.read_text())
    config["num_hidden_layers"] = 3000
    path.write_text(json.dumps(config))
    algorithm = registry.get_algorithm("torch_dynamic")
    calls = []
    monkeypatch.setattr(type(algorithm), "prepare_for_loading", lambda self, model, settings: calls.append(1) or model)
    start = time.perf_counter()
    with pytest.raises(SmashedModelLoadError, match=r"does not fit .*config.json: model.layers has 3000 blocks in "
                                                     r"config.json, 2 in the weights"):
        SmashedModel.from_pretrained(copy_of)
    assert calls == [] and time.perf_counter() - start < 30  # 626 s before; two skeletons of 1 and 2 layers now


def test_a_changed_width_is_refused_from_the_header(copy_of):
    path = copy_of / "config.json"
    config = json.loads(path.read_text())
    config["hidden_size"] = 128
    path.write_text(json.dumps(config))
    with pytest.raises(SmashedModelLoadError, match=r"model.layers.0.input_layernorm.weight \(64,\) in the "
                                                     r"weights, \(128,\) from config.json"):
        SmashedModel.from_pretrained(copy_of)


# ====================================================================== 8. exact fp32 round trips
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_fp32_round_trip_is_bit_exact_with_tensors_of_their_own(name, tmp_path):
    smashed = smashed_tiny(name, values={})
    smashed.save_pretrained(tmp_path / name)
    loaded = SmashedModel.from_pretrained(tmp_path / name)
    for tensor_name, tensor in loaded.model.state_dict().items():
        assert tensor.data_ptr() % 64 == 0, f"{tensor_name} is a view at offset {tensor.data_ptr() % 64}"
    torch.manual_seed(3)
    inputs = {"input_ids": torch.randint(3, 256, (4, 37)), "attention_mask": torch.ones(4, 37, dtype=torch.long)}
    with torch.no_grad():
        before, after = smashed(**inputs).logits, loaded(**inputs).logits
    assert (before - after).abs().max().item() == 0


# ====================================================================== 10. smashlib errors, never raw ones
def paths_of(value, prefix=()):
    """Every key path of a JSON value (dict keys and list indices), containers included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from paths_of(item, (*prefix, index))


WRONG_VALUES = [None, True, 3, -1, 1.5, "x", "../x", [], [1], {}, {"a": 1}]
DELETE = object()


def test_fuzz_of_every_manifest_field_gives_no_raw_exception(saved, tmp_path):
    original = json.loads((saved / "smash_config.json").read_text())
    folder = tmp_path / "fuzz"
    shutil.copytree(saved, folder)
    raw, refused, loaded = [], 0, 0
    for path in paths_of(original):
        for wrong in (*WRONG_VALUES, DELETE):
            manifest = json.loads(json.dumps(original))
            parent = manifest
            for key in path[:-1]:
                parent = parent[key]
            if wrong is DELETE:
                del parent[path[-1]]
            else:
                parent[path[-1]] = wrong
            (folder / "smash_config.json").write_text(json.dumps(manifest))
            try:
                SmashedModel.from_pretrained(folder, verify_checksum=False)
                loaded += 1
            except SmashError:
                refused += 1
            except Exception as error:  # noqa: BLE001 - counting exactly these
                raw.append(f"{'.'.join(map(str, path))} = {wrong!r}: {type(error).__name__}: {error}")
    assert refused > 100 and loaded > 10
    assert raw == [], f"{len(raw)} raw exceptions, e.g. {raw[:5]}"


def test_a_malformed_field_names_the_file_the_field_and_the_fix(copy_of):
    edit_manifest(copy_of, lambda m: m["saved_model"].update(algorithms=["torch_dynamic"]))
    with pytest.raises(SmashedModelLoadError, match=rf"{copy_of / 'smash_config.json'}: field "
                                                     r"'saved_model.algorithms\[0\]' is a string \('torch_dynamic'\), "
                                                     r"but must be an object\. .*save the model again"):
        SmashedModel.from_pretrained(copy_of)


def test_values_and_algorithms_that_contradict_each_other(copy_of):
    edit_manifest(copy_of, lambda m: m["saved_model"]["algorithms"][0].update(name="half"))
    with pytest.raises(SmashedModelLoadError, match="contradicts itself.*'values' chooses.*torch_dynamic"):
        SmashedModel.from_pretrained(copy_of)


def test_deeply_nested_json_is_a_smashlib_error(copy_of):
    (copy_of / "smash_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SmashedModelLoadError, match="smash_config.json is damaged"):
        SmashedModel.from_pretrained(copy_of)


def test_a_missing_config_json_is_an_error_not_a_default_llama(copy_of):
    (copy_of / "config.json").unlink()
    with pytest.raises(SmashedModelLoadError, match=r"config.json is missing: the folder is incomplete"):
        SmashedModel.from_pretrained(copy_of)


def test_a_missing_generation_config_is_fine(copy_of, saved):
    (copy_of / "generation_config.json").unlink()
    loaded = SmashedModel.from_pretrained(copy_of)
    assert torch.equal(logits(loaded), logits(SmashedModel.from_pretrained(saved)))


def test_odd_tokenizer_files_are_a_smashlib_error(copy_of):
    (copy_of / "tokenizer.json").write_text("{not json")
    with pytest.raises(SmashedModelLoadError, match=r"tokenizer files in .* cannot be read"):
        SmashedModel.from_pretrained(copy_of)


def test_an_attention_kernel_to_download_is_refused(copy_of):
    edit_manifest(copy_of, lambda m: m["saved_model"]["model"].update(attn_implementation="kernels-community/flash"))
    with pytest.raises(SmashedModelLoadError, match=r"attn_implementation'.*not a Hub kernel.*never does"):
        SmashedModel.from_pretrained(copy_of)
    edit_manifest(copy_of, lambda m: m["saved_model"]["model"].update(attn_implementation="bogus"))
    with pytest.raises(SmashedModelLoadError, match="cannot build a LlamaForCausalLM.*'bogus'"):
        SmashedModel.from_pretrained(copy_of)


@pytest.mark.parametrize("repo_id", ["owner/..", "owner/.", "a--b/c"])
def test_repo_ids_the_hub_refuses_are_smashlib_errors(repo_id):
    with pytest.raises(SmashedModelLoadError, match="not a Hub repo id"):
        SmashedModel.from_pretrained(repo_id)


def test_push_to_hub_offline_is_a_smashlib_error(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(SmashError, match=r"cannot push to 'me/tiny': the Hub is switched off \(HF_HUB_OFFLINE=1\)"):
        smashed_tiny().push_to_hub("me/tiny")
    with pytest.raises(SmashError, match="not a Hub repo id"):
        smashed_tiny().push_to_hub("me/..")


def test_a_full_disk_while_writing_the_weights_names_the_folder(copy_of, monkeypatch):
    from safetensors import SafetensorError

    before = (copy_of / "model.safetensors").read_bytes()

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(serialization, "save_file", full)
    with pytest.raises(SmashError, match=rf"cannot write the saved model to {copy_of}: .*No space left"):
        smashed_tiny().save_pretrained(copy_of)
    assert (copy_of / "model.safetensors").read_bytes() == before


# ====================================================================== 11. permissions
def test_weights_get_the_folders_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        folder = smashed_tiny().save_pretrained(tmp_path / "perm")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["model.safetensors"] == 0o644, oct(modes["model.safetensors"])
    assert set(modes.values()) == {0o644}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


# ====================================================================== layout: no import circle
def smashlib_imports(module: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / "smashlib" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("smashlib.")}


def test_no_circle_between_hub_model_and_serialization():
    assert not smashlib_imports("serialization") & {"smashlib.model", "smashlib.hub"}
    assert not smashlib_imports("hub") & {"smashlib.model", "smashlib.serialization"}
    assert not smashlib_imports("manifest") & {"smashlib.model", "smashlib.hub", "smashlib.serialization"}


def test_load_smashed_model_returns_what_from_pretrained_wraps(saved):
    model, config = serialization.load_smashed_model(saved)
    assert isinstance(model, torch.nn.Module) and not isinstance(model, SmashedModel)
    assert isinstance(config, SmashConfig) and [a.name for a in config.chosen_algorithms()] == ["torch_dynamic"]


def test_the_will_it_load_check_does_not_vanish(tmp_path, monkeypatch):
    smashed = smashed_tiny()
    algorithm = registry.get_algorithm("torch_dynamic")

    def broken(self, model, settings):
        raise AttributeError("'NoneType' object has no attribute 'weight'")

    monkeypatch.setattr(type(algorithm), "prepare_for_loading", broken)
    with pytest.raises(SmashError, match="saved but not loaded again: torch_dynamic.prepare_for_loading fails.*NoneType"):
        smashed.save_pretrained(tmp_path / "never")
    assert not (tmp_path / "never").exists()


# ====================================================================== schema versions
def test_an_older_schema_passes_each_algorithms_settings_through_upgrade_settings(copy_of, monkeypatch):
    from smashlib import config as config_module

    def rename(manifest):  # as if the hyperparameter had another name in schema 1
        values = manifest["values"]
        values["torch_dynamic_full_precision_layers"] = values.pop("torch_dynamic_target_modules")
        manifest["schema_version"] = 1

    edit_manifest(copy_of, rename)
    monkeypatch.setattr(config_module, "SCHEMA_VERSION", 2)
    calls = []

    def upgrade(cls, settings, schema_version):
        calls.append((dict(settings), schema_version))
        settings["target_modules"] = settings.pop("full_precision_layers")
        return settings

    monkeypatch.setattr(type(registry.get_algorithm("torch_dynamic")), "upgrade_settings", classmethod(upgrade))
    loaded = SmashedModel.from_pretrained(copy_of)
    assert len(calls) == 1 and calls[0][1] == 1 and "full_precision_layers" in calls[0][0]
    # and, saved before schema 5, with the layers the model keeps in float included (smashlib.config)
    assert loaded.smash_config["torch_dynamic_target_modules"] == with_kept_in_float(calls[0][0]["full_precision_layers"])
    assert SmashConfig.load_json(copy_of / "smash_config.json")["torch_dynamic_target_modules"]  # same place
    assert len(calls) == 2


def test_a_float_schema_version_is_malformed_not_newer(copy_of):
    edit_manifest(copy_of, lambda m: m.update(schema_version=1.0))
    with pytest.raises(SmashedModelLoadError, match=r"field 'schema_version' is a number with a fraction \(1.0\), "
                                                     "but must be an integer") as caught:
        SmashedModel.from_pretrained(copy_of)
    assert "upgrade" not in str(caught.value)


# ====================================================================== notebooks
def test_repr_html_shows_the_model_and_what_was_applied():
    smashed = smashed_tiny()
    page = smashed._repr_html_()
    assert page.startswith("<table>") and "LlamaForCausalLM" in page and "torch_dynamic" in page
    assert "target_modules=" in page and "quantizer" in page


def test_shared_layers_are_not_mistaken_for_a_wrong_layer_count(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.AlbertConfig(hidden_size=32, embedding_size=16, num_hidden_layers=4, num_attention_heads=4,
                                       intermediate_size=64, vocab_size=256, max_position_embeddings=64)
    model = transformers.AlbertForMaskedLM(config).eval()  # 4 layers, one set of weights
    smashed = smash(model, SmashConfig({}, device="cpu"), verbose=False)
    smashed.save_pretrained(tmp_path / "albert")
    assert torch.equal(logits(SmashedModel.from_pretrained(tmp_path / "albert")), logits(smashed))
