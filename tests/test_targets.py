"""smashlib.targets: the one target_modules setting, its presets, custom patterns and the tie detector."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from smashlib import SmashConfig
from smashlib.errors import HyperparameterValueError, UnsupportedModelError
from smashlib.targets import (
    PRESET_NAMES,
    TargetModules,
    check_targets,
    is_linear,
    is_target_modules_hyperparameter,
    normalize_target_value,
    output_head_names,
    resolve_targets,
    target_modules_hyperparameter,
    tied_embeddings,
)
from tests.tiny_models import build_tiny


def module_visits(work) -> int:
    """How many modules ``work`` visits through named_modules (which modules(), children scans and
    model-wide passes all go through): a count, not a time, so the linear-size tests never depend on how
    busy the machine is (a timed ratio failed CI once at 400x under load)."""
    original = nn.Module.named_modules
    count = 0

    def counting(self, *args, **kwargs):
        nonlocal count
        count += 1
        return original(self, *args, **kwargs)

    nn.Module.named_modules = counting
    try:
        work()
    finally:
        nn.Module.named_modules = original
    return count


def test_presets_select_what_they_say_on_llama():
    model = build_tiny("llama")
    every = [name for name, module in model.named_modules() if is_linear(module)]
    assert resolve_targets(model, "all_linear") == every
    assert resolve_targets(model, "all_but_output_head") == [n for n in every if n != "lm_head"]
    no_down = resolve_targets(model, "all_but_outlier_layers")
    assert "lm_head" in no_down and not any(n.endswith("down_proj") for n in no_down)
    both = resolve_targets(model, "all_but_outlier_layers_and_output_head")
    assert both == [n for n in no_down if n != "lm_head"]


def test_outlier_layers_of_each_family():
    for family, suffix in (("gpt2", "mlp.c_proj"), ("bert", "output.dense"), ("t5", "DenseReluDense.wo")):
        model = build_tiny(family)
        kept = set(resolve_targets(model, "all_linear")) - set(resolve_targets(model, "all_but_outlier_layers"))
        assert kept and all(name.endswith(suffix) for name in kept), (family, kept)


def test_custom_patterns_globs_suffixes_regex_and_groups():
    model = build_tiny("llama")
    assert resolve_targets(model, {"include": ["q_proj", "k_proj"]}) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
    ]
    first_block = resolve_targets(model, {"include": ["model.layers.0.*"], "exclude": ["re:mlp"]})
    assert first_block and all(n.startswith("model.layers.0.self_attn") for n in first_block)
    assert resolve_targets(model, {"include": ["@output_head"]}) == ["lm_head"]
    assert resolve_targets(model, TargetModules(exclude=("@output_head", "*proj"))) == []


def test_normalized_values_are_json_and_presets_round_trip():
    assert normalize_target_value("all_linear") == "all_linear"
    assert normalize_target_value({"exclude": ["@output_head"]}) == "all_but_output_head"
    assert normalize_target_value({"include": "q_proj"}) == {"include": ["q_proj"], "exclude": []}


@pytest.mark.parametrize("bad", [
    "all", 3, {"include": []}, {"include": [""]}, {"includes": ["*"]}, {"include": ["@head"]}, {"include": ["re:("]},
])
def test_bad_values_are_refused_with_the_allowed_forms(bad):
    with pytest.raises(HyperparameterValueError, match="target_modules"):
        normalize_target_value(bad)


def test_a_pattern_matching_nothing_is_refused_before_anything_changes():
    model = build_tiny("llama")
    with pytest.raises(HyperparameterValueError, match="q_prj"):
        check_targets(model, {"include": ["q_prj"]}, algorithm="x")
    with pytest.raises(UnsupportedModelError, match="none"):
        check_targets(model, {"include": ["*"], "exclude": ["*"]}, algorithm="x")


def test_the_hyperparameter_is_a_categorical_of_presets_marked_for_smashconfig():
    hp = target_modules_hyperparameter("all_but_output_head")
    assert hp.default_value == "all_but_output_head" and set(hp.choices) == set(PRESET_NAMES)
    assert is_target_modules_hyperparameter(hp)


def test_smashconfig_accepts_custom_patterns_for_that_kind_only():
    cfg = SmashConfig({"quantizer": "torch_dynamic"}, device="cpu")
    key = "torch_dynamic_target_modules"
    cfg[key] = {"include": ["*"], "exclude": ["lm_head", "down_proj"]}
    assert cfg[key] == {"include": ["*"], "exclude": ["lm_head", "down_proj"]}
    assert SmashConfig.from_json_dict(cfg.to_json_dict())[key] == cfg[key]
    with pytest.raises(HyperparameterValueError):
        cfg[key] = {"include": ["@nope"]}


def test_is_linear_takes_exact_types_only():
    from transformers.pytorch_utils import Conv1D

    class Sub(nn.Linear):
        pass

    assert is_linear(nn.Linear(2, 2)) and is_linear(Conv1D(2, 2)) and not is_linear(Sub(2, 2))
    assert output_head_names(build_tiny("llama")) == {"lm_head"}


def test_tie_detector_finds_every_path_and_is_linear_in_model_size():
    t5 = build_tiny("t5")
    assert tied_embeddings(t5, ["lm_head"]) == {"lm_head": ["shared", "encoder.embed_tokens", "decoder.embed_tokens"]}
    llama = build_tiny("llama")
    assert tied_embeddings(llama, ["lm_head", "model.layers.0.mlp.up_proj"]) == {
        "lm_head": ["model.embed_tokens"], "model.layers.0.mlp.up_proj": []}

    def visits(layers: int) -> int:
        model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(layers)])
        names = [n for n, m in model.named_modules() if is_linear(m)]
        return module_visits(lambda: tied_embeddings(model, names))

    small, large = visits(300), visits(3000)
    assert large <= 10 * small + 10, (small, large)  # one pass per layer (quadratic) would be ~100x


def test_torch_embedding_tie_through_a_copied_parameter_object():
    embedding, head = nn.Embedding(4, 3), nn.Linear(3, 4, bias=False)
    head.weight = nn.Parameter(embedding.weight.data)  # new Parameter object, same storage
    model = nn.ModuleDict({"embed": embedding, "head": head})
    assert tied_embeddings(model, ["head"]) == {"head": ["embed"]}
    assert torch.equal(model["head"].weight, model["embed"].weight)


def test_torch_dynamic_prepares_a_skeleton_in_time_linear_in_its_layers():
    """issue 11 item 7: a folder claiming 3000 layers took 626 s (one scan of every module per Linear)."""
    from smashlib.registry import get_algorithm

    def visits(layers: int) -> int:
        with torch.device("meta"):
            model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(layers)])
            algorithm = get_algorithm("torch_dynamic")
            return module_visits(lambda: algorithm.prepare_for_loading(model, {"target_modules": "all_linear"}))

    small, large = visits(100), visits(1000)
    assert large <= 10 * small + 10, (small, large)  # one scan of every module per Linear would be ~100x