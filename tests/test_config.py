"""SmashConfig: dictionary behaviour, the ConfigSpace space behind it, JSON, and every error it raises."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ConfigSpace import Configuration

import smashlib
from smashlib import (
    HyperparameterValueError,
    InactiveHyperparameterError,
    IncompatibleAlgorithmsError,
    MissingComponentError,
    MissingPackageError,
    SmashConfig,
    SmashConfigError,
    SmashError,
    UnknownNameError,
    UnsupportedDeviceError,
    smash,
)
from smashlib.algorithm import GROUP_ORDER
from tests.tiny_models import build_tiny


def test_groups_are_categoricals_with_none_and_their_algorithms():
    space = SmashConfig.space()
    for group in GROUP_ORDER:
        assert None in space[group].choices
    assert {"half", "torch_dynamic"} <= set(space["quantizer"].choices)
    assert "torch_unstructured" in space["pruner"].choices
    assert "torch_compile" in space["compiler"].choices


def test_hyperparameters_are_prefixed_and_conditional():
    space = SmashConfig.space()
    assert "half_dtype" in space
    parents = {c.child.name: (c.parent.name, c.value) for c in space.conditions}
    assert parents["half_dtype"] == ("quantizer", "half")
    assert parents["torch_unstructured_sparsity"] == ("pruner", "torch_unstructured")


def test_choosing_an_algorithm_fills_its_defaults_and_switching_drops_them():
    cfg = SmashConfig(device="cpu")
    cfg["quantizer"] = "half"
    assert cfg["half_dtype"] == "bfloat16"
    cfg["quantizer"] = "torch_dynamic"
    assert "half_dtype" not in cfg
    assert "torch_dynamic_target_modules" in cfg
    cfg["quantizer"] = None
    assert cfg["quantizer"] is None and len(cfg) == 0


def test_dictionary_style_access_and_iteration_over_active_keys():
    cfg = SmashConfig({"quantizer": "half", "half_dtype": "float16", "pruner": "torch_unstructured"}, device="cpu")
    cfg["torch_unstructured_sparsity"] = 0.3
    assert cfg["half_dtype"] == "float16"
    assert "quantizer" in cfg and "compiler" not in cfg
    assert set(cfg) == {
        "quantizer", "half_dtype", "pruner", "torch_unstructured_sparsity",
        "torch_unstructured_method", "torch_unstructured_target_modules",
    }
    assert cfg.to_dict()["torch_unstructured_sparsity"] == 0.3
    del cfg["pruner"]
    assert "torch_unstructured_sparsity" not in cfg


def test_values_come_back_as_plain_python_types():
    cfg = SmashConfig({"pruner": "torch_unstructured"}, device="cpu")
    cfg["torch_unstructured_sparsity"] = np.float64(0.25)
    values = cfg.to_dict()
    assert type(values["torch_unstructured_sparsity"]) is float
    assert type(values["torch_unstructured_target_modules"]) is str
    json.dumps(values)  # plain types serialise


def test_integers_are_accepted_for_floats():
    cfg = SmashConfig({"pruner": "torch_unstructured"}, device="cpu")
    cfg["torch_unstructured_sparsity"] = 0
    assert cfg["torch_unstructured_sparsity"] == 0.0 and type(cfg["torch_unstructured_sparsity"]) is float


def test_configuration_is_valid_for_configspace():
    cfg = SmashConfig({"quantizer": "half", "compiler": "torch_compile"}, device="cpu")
    configuration = cfg.configuration()
    assert isinstance(configuration, Configuration)
    assert configuration["quantizer"] == "half"
    again = SmashConfig.from_configuration(configuration, device="cpu")
    assert again == cfg


def test_sampled_configurations_round_trip_through_smashconfig():
    space = SmashConfig.space()
    space.seed(3)
    for configuration in space.sample_configuration(20):
        cfg = SmashConfig.from_configuration(configuration, device="cpu")
        assert cfg.configuration() == configuration


def test_repr_lists_active_algorithms_and_hyperparameters():
    cfg = SmashConfig({"quantizer": "half", "pruner": "torch_unstructured"}, device="cpu")
    text = repr(cfg)
    assert "quantizer" in text and "half" in text and "half_dtype = 'bfloat16'" in text
    assert "torch_unstructured_sparsity = 0.1" in text
    assert "no algorithm chosen" in repr(SmashConfig(device="cpu"))


def test_json_round_trip_with_schema_and_version(tmp_path):
    cfg = SmashConfig({"quantizer": "half", "half_dtype": "float16"}, device="cpu")
    path = tmp_path / "smash_config.json"
    cfg.save_json(path)
    payload = json.loads(path.read_text())
    assert payload["schema_version"] == smashlib.config.SCHEMA_VERSION == 5
    assert payload["smashlib_version"] == smashlib.__version__
    assert SmashConfig.load_json(path) == cfg


def test_json_from_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "smash_config.json"
    path.write_text(json.dumps({"schema_version": 99, "smashlib_version": "9.0", "values": {}}))
    with pytest.raises(SmashConfigError, match="schema version 99.*upgrade smashlib"):
        SmashConfig.load_json(path)


def test_invalid_json_is_a_clear_error(tmp_path):
    path = tmp_path / "smash_config.json"
    path.write_text("{not json")
    with pytest.raises(SmashConfigError, match="not valid JSON"):
        SmashConfig.load_json(path)


# ---------------------------------------------------------------- errors at assignment time
def test_unknown_group_key_suggests_the_close_match():
    cfg = SmashConfig(device="cpu")
    with pytest.raises(UnknownNameError, match="Did you mean 'quantizer'"):
        cfg["quantiser"] = "half"


def test_unknown_algorithm_suggests_the_close_match_and_lists_choices():
    cfg = SmashConfig(device="cpu")
    with pytest.raises(UnknownNameError, match="Did you mean 'half'.*Choices for 'quantizer'"):
        cfg["quantizer"] = "hlaf"


def test_algorithm_in_the_wrong_group_names_the_right_one():
    cfg = SmashConfig(device="cpu")
    with pytest.raises(SmashConfigError, match=r"'half' is a quantizer, not a pruner: set cfg\['quantizer'\]"):
        cfg["pruner"] = "half"


def test_unknown_hyperparameter_suggests_the_close_match():
    cfg = SmashConfig({"quantizer": "half"}, device="cpu")
    with pytest.raises(UnknownNameError, match="Did you mean 'half_dtype'"):
        cfg["half_dtyp"] = "float16"


def test_inactive_hyperparameter_names_the_algorithm_to_choose():
    cfg = SmashConfig(device="cpu")
    with pytest.raises(InactiveHyperparameterError, match=r"Set cfg\['quantizer'\] = 'half' first"):
        cfg["half_dtype"] = "float16"
    with pytest.raises(InactiveHyperparameterError):
        cfg["half_dtype"]


def test_value_out_of_range_gives_the_range():
    cfg = SmashConfig({"pruner": "torch_unstructured"}, device="cpu")
    with pytest.raises(HyperparameterValueError, match="between 0.0 and 0.99"):
        cfg["torch_unstructured_sparsity"] = 1.5


def test_value_not_among_choices_gives_the_choices():
    cfg = SmashConfig({"quantizer": "half"}, device="cpu")
    with pytest.raises(HyperparameterValueError, match="one of 'bfloat16', 'float16'"):
        cfg["half_dtype"] = "int3"


def test_wrong_type_is_a_value_error_not_a_crash():
    cfg = SmashConfig({"pruner": "torch_unstructured"}, device="cpu")
    with pytest.raises(HyperparameterValueError):
        cfg["torch_unstructured_sparsity"] = "a lot"


def test_unknown_device_is_refused():
    with pytest.raises(SmashConfigError, match="unknown device 'tpu'"):
        SmashConfig(device="tpu")


def test_errors_are_catchable_as_builtin_kinds():
    cfg = SmashConfig(device="cpu")
    with pytest.raises(KeyError):
        cfg["nope"] = 1
    with pytest.raises(ValueError):
        cfg["quantizer"] = "hlaf"


# ---------------------------------------------------------------- plugins, incompatible pairs, packages, devices
PLUGIN_MODULE = '''
from ConfigSpace import Integer
from smashlib.algorithm import Algorithm

class Recorder(Algorithm):
    """Records the order smash() applies algorithms in (test plugin)."""
    group = "batcher"
    calls = []
    def apply(self, model, settings, components):
        type(self).calls.append(self.name)
        return model

class BatchPlugin(Recorder):
    name = "plugin_batcher"
    hyperparameters = (Integer("size", (1, 64), default=4),)
    incompatible_with = ("torch_compile",)
    upgrades = []

    @classmethod
    def upgrade_settings(cls, settings, schema_version):
        cls.upgrades.append((dict(settings), schema_version))
        if "old_size" in settings:  # renamed in schema 2
            settings["size"] = settings.pop("old_size")
        return settings

class CachePlugin(Recorder):
    name = "plugin_cacher"
    group = "cacher"

class NeedsPackage(Recorder):
    name = "plugin_needs_package"
    group = "distiller"
    needs_packages = ("a-package-that-does-not-exist>=1.0",)

class CudaOnly(Recorder):
    name = "plugin_cuda_only"
    group = "recoverer"
    runs_on = ("cuda",)

class NeedsData(Recorder):
    name = "plugin_needs_data"
    group = "distiller"
    requires = ("tokenizer", "data")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Installs a package with algorithms through the smashlib.algorithms entry point group."""
    (tmp_path / "smash_plugin.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "smash_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: smash-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[smashlib.algorithms]\nplugin = smash_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    smashlib.registry.refresh()
    import smash_plugin

    smash_plugin.Recorder.calls.clear()
    smash_plugin.BatchPlugin.upgrades.clear()
    yield smash_plugin
    monkeypatch.undo()
    smashlib.registry.refresh()


def test_entry_point_algorithms_join_the_space(plugin):
    cfg = SmashConfig({"batcher": "plugin_batcher"}, device="cpu")
    assert cfg["plugin_batcher_size"] == 4
    assert "plugin_batcher" in SmashConfig.space()["batcher"].choices


def test_incompatible_pair_is_a_forbidden_clause_and_names_both(plugin):
    assert SmashConfig.space().forbidden_clauses
    cfg = SmashConfig({"compiler": "torch_compile"}, device="cpu")
    with pytest.raises(IncompatibleAlgorithmsError, match="batcher 'plugin_batcher'.*compiler 'torch_compile'"):
        cfg["batcher"] = "plugin_batcher"
    cfg = SmashConfig({"batcher": "plugin_batcher"}, device="cpu")
    with pytest.raises(IncompatibleAlgorithmsError, match="compiler 'torch_compile'.*batcher 'plugin_batcher'"):
        cfg["compiler"] = "torch_compile"


def test_missing_package_is_listed_but_choosing_it_says_what_to_install(plugin):
    assert "plugin_needs_package" in SmashConfig.space()["distiller"].choices
    with pytest.raises(MissingPackageError, match="a-package-that-does-not-exist>=1.0.*pip install"):
        SmashConfig({"distiller": "plugin_needs_package"}, device="cpu")


def test_algorithm_for_another_device_is_refused(plugin):
    with pytest.raises(UnsupportedDeviceError, match="plugin_cuda_only runs on cuda, not on .*'cpu'"):
        SmashConfig({"recoverer": "plugin_cuda_only"}, device="cpu")


def test_missing_components_are_reported_by_smash_with_the_fix(plugin):
    model = build_tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = SmashConfig({"distiller": "plugin_needs_data", "quantizer": "half"}, device="cpu")
    with pytest.raises(MissingComponentError, match=r"'plugin_needs_data' needs a tokenizer: call cfg.add_tokenizer"):
        smash(model, cfg, verbose=False)
    cfg.add_tokenizer(object())
    with pytest.raises(MissingComponentError, match=r"needs data: call cfg.add_data"):
        smash(model, cfg, verbose=False)
    assert all(v.dtype == before[k].dtype and v.equal(before[k]) for k, v in model.state_dict().items())
    assert plugin.Recorder.calls == []


def test_smash_applies_groups_in_the_documented_order(plugin):
    cfg = SmashConfig(device="cpu")
    # assigned in reverse order on purpose
    cfg["batcher"] = "plugin_batcher"
    cfg["cacher"] = "plugin_cacher"
    cfg["quantizer"] = "half"
    cfg["pruner"] = "torch_unstructured"
    order = [a.name for a in cfg.chosen_algorithms()]
    assert order == ["torch_unstructured", "half", "plugin_cacher", "plugin_batcher"]
    smashed = smash(build_tiny("llama"), cfg, verbose=False)
    assert plugin.Recorder.calls == ["plugin_cacher", "plugin_batcher"]
    assert smashed.algorithms == order


# ---------------------------------------------------------------- schema 2: old configs pass through upgrade_settings
def test_a_version_1_config_is_upgraded_once_per_algorithm_with_unprefixed_settings(plugin):
    payload = {"schema_version": 1, "values": {"batcher": "plugin_batcher", "plugin_batcher_old_size": 8}}
    cfg = SmashConfig.from_json_dict(payload, device="cpu")
    assert cfg["plugin_batcher_size"] == 8
    assert plugin.BatchPlugin.upgrades == [({"old_size": 8}, 1)]


def test_a_current_config_is_not_upgraded(plugin, tmp_path):
    cfg = SmashConfig({"batcher": "plugin_batcher", "plugin_batcher_size": 5}, device="cpu")
    cfg.save_json(tmp_path / "c.json")
    assert SmashConfig.load_json(tmp_path / "c.json")["plugin_batcher_size"] == 5
    assert plugin.BatchPlugin.upgrades == []


def test_a_version_1_file_of_today_still_loads(tmp_path):
    path = tmp_path / "smash_config.json"
    path.write_text(json.dumps({"schema_version": 1, "smashlib_version": "0.1.0", "device": "cpu",
                                "values": {"quantizer": "half", "half_dtype": "float16"}, "components": {}}))
    assert SmashConfig.load_json(path).to_dict() == {"quantizer": "half", "half_dtype": "float16"}


@pytest.mark.parametrize("version", [1.0, "1", True, None, 0])
def test_a_malformed_schema_version_says_so(version):
    with pytest.raises(SmashConfigError, match="'schema_version' is malformed") as raised:
        SmashConfig.from_json_dict({"schema_version": version, "values": {}})
    assert "upgrade smashlib" not in str(raised.value)


@pytest.mark.parametrize(("field", "value"), [("values", ["quantizer"]), ("components", "tok"), ("device", 3)])
def test_malformed_fields_of_a_saved_config_are_named(field, value):
    with pytest.raises(SmashConfigError, match=f"the field '{field}'.*malformed"):
        SmashConfig.from_json_dict({"schema_version": 2, "values": {}, field: value})


def test_unreadable_config_files_are_smashlib_errors(tmp_path):
    with pytest.raises(SmashConfigError, match="cannot read"):
        SmashConfig.load_json(tmp_path / "missing.json")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SmashConfigError, match="not valid JSON"):
        SmashConfig.load_json(deep)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SmashConfigError):
        SmashConfig.load_json(binary)


# ---------------------------------------------------------------- values (issue 11, item 5)
@pytest.mark.parametrize(
    ("choice", "key", "value"),
    [
        ({"pruner": "torch_unstructured"}, "torch_unstructured_sparsity", [0.3]),
        ({"pruner": "torch_unstructured"}, "torch_unstructured_sparsity", [0.3, 0.5]),
        ({"quantizer": "half"}, "half_dtype", ["bfloat16"]),
        ({"quantizer": "half"}, "half_dtype", ("bfloat16", "float16")),
    ],
)
def test_lists_are_refused_at_assignment(choice, key, value):
    cfg = SmashConfig(choice, device="cpu")
    before = cfg.to_dict()
    with pytest.raises(HyperparameterValueError, match=f"{key} = .* give one value"):
        cfg[key] = value
    assert cfg.to_dict() == before
    with pytest.raises(HyperparameterValueError, match="give one value"):
        SmashConfig({**choice, key: value}, device="cpu")


def test_update_is_all_or_nothing():
    cfg = SmashConfig({"quantizer": "half"}, device="cpu")
    before = cfg.to_dict()
    with pytest.raises(HyperparameterValueError):
        cfg.update({"half_dtype": "float16", "pruner": "torch_unstructured", "torch_unstructured_sparsity": 5.0})
    assert cfg.to_dict() == before
    with pytest.raises(UnknownNameError):
        cfg.update({"quantizer": None, "nope": 1})
    assert cfg.to_dict() == before
    cfg.update({"half_dtype": "float16", "pruner": "torch_unstructured"})
    assert cfg["half_dtype"] == "float16" and cfg["pruner"] == "torch_unstructured"


def test_a_torch_device_is_accepted():
    import torch

    assert SmashConfig(device=torch.device("cpu")).device == "cpu"
    assert SmashConfig(device=torch.device("cuda", 0)).device == "cuda"
    with pytest.raises(SmashConfigError, match="unknown device"):
        SmashConfig(device=torch.device("meta"))


def test_from_configuration_gives_pythons_own_types():
    space = SmashConfig.space()
    space.seed(3)
    for configuration in space.sample_configuration(20):
        cfg = SmashConfig.from_configuration(configuration, device="cpu")
        for key, value in cfg.items():
            assert type(value) in (str, int, float, bool, type(None)), (key, type(value))
        assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


# ---------------------------------------------------------------- components: odd files and Hub ids offline
@pytest.fixture
def tokenizer_folder(tmp_path):
    from tests.tiny_models import tiny_tokenizer

    folder = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("file", "content", "named"),
    [
        ("tokenizer_config.json", "{", "tokenizer_config.json is not valid JSON"),
        ("tokenizer_config.json", "[1, 2]", "tokenizer_config.json holds a JSON list"),
        ("tokenizer.json", "{", "tokenizer.json is not valid JSON"),
        ("tokenizer.json", "[]", "tokenizer.json holds a JSON list"),
        ("tokenizer_config.json", '{"tokenizer_class": 5}', "cannot load a tokenizer from the folder"),
        ("special_tokens_map.json", "[1]", "special_tokens_map.json holds a JSON list"),
    ],
)
def test_odd_tokenizer_files_are_a_smashlib_error_naming_the_file(tokenizer_folder, file, content, named):
    from smashlib.errors import ComponentLoadError

    (tokenizer_folder / file).write_text(content)
    cfg = SmashConfig(device="cpu")
    with pytest.raises(ComponentLoadError, match=named) as raised:
        cfg.add_tokenizer(tokenizer_folder)
    assert str(tokenizer_folder) in str(raised.value) and "cfg.add_tokenizer(AutoTokenizer" in str(raised.value)
    assert cfg.components.tokenizer is None


@pytest.mark.parametrize(
    ("file", "content"), [("preprocessor_config.json", "{"), ("preprocessor_config.json", '{"processor_class": 3}')]
)
def test_odd_processor_files_are_a_smashlib_error(tokenizer_folder, file, content):
    from smashlib.errors import ComponentLoadError

    (tokenizer_folder / file).write_text(content)
    with pytest.raises(ComponentLoadError, match="cannot load a processor from the folder"):
        SmashConfig(device="cpu").add_processor(tokenizer_folder)


@pytest.mark.parametrize("method", ["add_tokenizer", "add_processor"])
def test_hub_ids_offline_say_what_to_pass_instead(method):
    from smashlib.errors import ComponentLoadError

    with pytest.raises(ComponentLoadError, match="offline.*pass a local folder.*object") as raised:
        getattr(SmashConfig(device="cpu"), method)("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in str(raised.value)
    for bad_id in ("owner/..", "a b"):
        with pytest.raises(ComponentLoadError, match="neither a local folder nor a valid Hub id"):
            getattr(SmashConfig(device="cpu"), method)(bad_id)


def test_a_tokenizer_is_loaded_without_running_its_code(tokenizer_folder, tmp_path):
    marker = tmp_path / "ran"
    (tokenizer_folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((tokenizer_folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (tokenizer_folder / "tokenizer_config.json").write_text(json.dumps(config))
    cfg = SmashConfig(device="cpu")
    try:
        cfg.add_tokenizer(tokenizer_folder)
    except SmashError:
        pass
    assert not marker.exists()


# ---------------------------------------------------------------- the seed guide's spelling, notebooks, the table
def test_add_dataset_is_the_guides_name_for_add_data():
    from tests.tiny_models import tiny_tokenizer

    assert SmashConfig.add_dataset is SmashConfig.add_data
    cfg = SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_smoothquant": True}, device="cpu")
    cfg.add_tokenizer(tiny_tokenizer())
    cfg.add_dataset("PydocTopics")
    assert cfg.missing_components() == [] and "PydocTopics" in str(cfg.components.descriptions["data"])


def test_repr_html_shows_the_algorithms_and_escapes():
    cfg = SmashConfig({"quantizer": "half", "pruner": "torch_unstructured"}, device="cpu")
    cfg.components.descriptions["tokenizer"] = "<script>"
    html = cfg._repr_html_()
    assert "<table>" in html and "torch_unstructured" in html and "half_dtype=" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "no algorithm chosen" in SmashConfig(device="cpu")._repr_html_()


def test_the_algorithms_table_says_when_a_setting_needs_data():
    rows = {row["name"]: row for row in smashlib.algorithms_table()}
    dynamic = rows["torch_dynamic"]
    assert dynamic["requires"] == []
    assert dynamic["requires_when"]["data"] == ["smoothquant=True"]
    assert dynamic["needs"] == "tokenizer, data (with smoothquant=True)"
    if "gptq" in rows:
        assert rows["gptq"]["needs"] == "tokenizer, data (not with method=rtn)"
    assert rows["half"]["needs"] == ""


def test_import_smashlib_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, smashlib\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert 'transformers' not in sys.modules, 'transformers'\n"
        "cfg = smashlib.SmashConfig(device='cpu')\n"
        "from smashlib.smash import check_before_smashing\n"
        "from smashlib import smash, SmashedModel\n"
        "assert callable(smash) and smash.__module__ == 'smashlib.smash', smash\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
