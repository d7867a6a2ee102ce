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
    UnknownNameError,
    UnsupportedDeviceError,
    smash,
)
from smashlib.algorithm import GROUP_ORDER
from smashlib.config import SCHEMA_VERSION
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
    assert payload["schema_version"] == SCHEMA_VERSION
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
