"""Mixture-of-experts blocks: transformers 5 fuses each block's experts into 3-D weights, which no layer-wise
algorithm would reach (on tiny Mixtral, 77% of the parameters). smash() gives each expert its own
nn.Linear layers first (smashlib.layers.expert_linears); these tests hold that the split is exact, that it
is undone when a check fails, and that the experts are then quantized and load back exactly."""
from __future__ import annotations

import pytest
import torch

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.errors import SmashError
from smashlib.layers.expert_linears import fused_experts_names, has_split_experts, split_experts
from smashlib.layers.packed_int import PackedLinear
from tests.tiny_models import build_tiny, tiny_inputs

#: Mixtral (gate_up_proj [experts, 2*inter, hidden]), Qwen2-MoE (plus a dense shared expert), GPT-OSS
#: (transposed [experts, hidden, 2*inter] weights with biases and its own clamped, interleaved SwiGLU).
MOE_FAMILIES = ["mixtral", "qwen2_moe", "gpt_oss"]
GPTQ_8BIT = {"quantizer": "gptq", "gptq_method": "rtn", "gptq_weight_bits": 8, "gptq_group_size": -1}


def _experts_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [module for name, module in model.named_modules() if name.endswith("mlp.experts")]


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_split_experts_compute_what_the_fused_ones_do_and_restore_exactly(family):
    model, inputs = build_tiny(family), tiny_inputs(family)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    fused_class = type(_experts_of(model)[0])
    with torch.no_grad():
        fused = model(**inputs).logits
    assert len(fused_experts_names(model)) == 2  # one per layer

    split = split_experts(model)
    experts = _experts_of(model)[0]
    assert has_split_experts(model) and not fused_experts_names(model)
    assert len(experts.down_proj) == 4 and all(type(layer) is torch.nn.Linear for layer in experts.down_proj)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, fused, rtol=0, atol=1e-6)

    split.restore()
    assert type(_experts_of(model)[0]) is fused_class and not has_split_experts(model)
    restored = model.state_dict()
    assert list(restored) == list(state)  # the same keys, in the same order
    assert all(torch.equal(restored[key], value) for key, value in state.items())


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_every_expert_is_quantized_and_loads_back_exactly(family, tmp_path):
    model, inputs = build_tiny(family), tiny_inputs(family)
    smashed = smash(model, SmashConfig(GPTQ_8BIT, device="cpu"), verbose=False)
    for experts in _experts_of(smashed.model):
        layers = [*experts.down_proj, *getattr(experts, "gate_up_proj", [])]
        assert len(layers) == 8 and all(isinstance(layer, PackedLinear) for layer in layers)
    assert not any(type(module) is torch.nn.Linear for name, module in smashed.model.named_modules() if ".experts." in name)
    with torch.no_grad():
        before = smashed(**inputs).logits
    smashed.save_pretrained(tmp_path / "saved")
    for loaded in (
        SmashedModel.from_pretrained(tmp_path / "saved"),
        SmashedModel.from_pretrained(tmp_path / "saved", model=build_tiny(family)),  # fused: split when loading
    ):
        with torch.no_grad():
            assert torch.equal(loaded(**inputs).logits, before)


@pytest.mark.parametrize(("values", "message"), [
    ({"gptq_method": "gptq"}, "add_tokenizer"),  # calibrates: needs a tokenizer and data
    ({"gptq_target_modules": {"include": ["*experts.gate_proj.*"]}}, "gate_proj"),  # checked on the split layers
])
def test_a_failed_check_leaves_the_experts_fused(values, message):
    model = build_tiny("mixtral")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(SmashError, match=message):
        smash(model, SmashConfig({**GPTQ_8BIT, **values}, device="cpu"), verbose=False)
    assert not has_split_experts(model) and len(fused_experts_names(model)) == 2
    assert list(model.state_dict()) == list(state)


def test_target_modules_can_name_expert_layers():
    """Patterns are checked against the split layers, so a user can keep the experts' down projections in float."""
    model = build_tiny("mixtral")
    config = SmashConfig({**GPTQ_8BIT, "gptq_target_modules": {"include": ["*experts.gate_up_proj.*"]}}, device="cpu")
    smashed = smash(model, config, verbose=False)
    experts = _experts_of(smashed.model)[0]
    assert all(isinstance(layer, PackedLinear) for layer in experts.gate_up_proj)
    assert all(type(layer) is torch.nn.Linear for layer in experts.down_proj)


def test_expert_down_projections_are_outlier_layers():
    """torch_dynamic's default keeps the layers reading outlier channels in float: the experts' down
    projections are such layers as much as a dense MLP's down_proj is."""
    smashed = smash(build_tiny("mixtral"), SmashConfig({"quantizer": "torch_dynamic"}, device="cpu"), verbose=False)
    experts = _experts_of(smashed.model)[0]
    assert all(type(layer) is torch.nn.Linear for layer in experts.down_proj)
    assert all(type(layer) is not torch.nn.Linear for layer in experts.gate_up_proj)
