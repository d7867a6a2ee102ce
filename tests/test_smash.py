"""smash() and SmashedModel: checks before touching the model, wrapping, forwarding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from smashlib import SmashConfig, SmashedModel, SmashError, UnsupportedModelError, smash
from tests.tiny_models import build_tiny, tiny_inputs


def test_smashed_model_behaves_like_the_wrapped_model():
    model = build_tiny("llama")
    cfg = SmashConfig({"pruner": "torch_unstructured"}, device="cpu")
    smashed = smash(model, cfg, verbose=False)
    assert isinstance(smashed, SmashedModel)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        assert torch.equal(smashed(**inputs).logits, model(**inputs).logits)
    out = smashed.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert smashed.config is model.config  # attribute access goes to the model
    assert smashed.smash_config == cfg and smashed.smash_config is not cfg  # its own frozen copy
    assert "torch_unstructured" in repr(smashed) and "LlamaForCausalLM" in repr(smashed)
    smashed.foo_flag = 3  # attributes set on the wrapper land on the model
    assert model.foo_flag == 3


def test_plain_torch_module_is_supported():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    smashed = smash(model, SmashConfig({"quantizer": "torch_dynamic"}, device="cpu"), verbose=False)
    x = torch.randn(3, 16)
    assert smashed(x).shape == (3, 4)


def test_unsupported_model_is_refused_before_anything_changes():
    model = nn.Sequential(nn.Conv1d(2, 2, 1))  # no Linear layer: nothing for these algorithms to act on
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = SmashConfig({"pruner": "torch_unstructured", "quantizer": "torch_dynamic"}, device="cpu")
    with pytest.raises(UnsupportedModelError, match="nn.Linear"):
        smash(model, cfg, verbose=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_not_a_module_is_refused():
    with pytest.raises(UnsupportedModelError, match="torch.nn.Module"):
        smash("gpt2", SmashConfig(device="cpu"))


def test_smashing_twice_is_refused():
    smashed = smash(build_tiny("gpt2"), SmashConfig(device="cpu"), verbose=False)
    with pytest.raises(UnsupportedModelError, match="already smashed"):
        smash(smashed, SmashConfig(device="cpu"))


def test_a_failing_algorithm_says_which_and_what_was_applied(monkeypatch):
    from smashlib import registry

    def broken(model, settings, components):
        raise RuntimeError("boom")

    monkeypatch.setattr(registry.get_algorithm("half"), "apply", broken)
    cfg = SmashConfig({"pruner": "torch_unstructured", "quantizer": "half"}, device="cpu")
    with pytest.raises(SmashError, match="half failed after torch_unstructured was applied.*boom"):
        smash(build_tiny("llama"), cfg, verbose=False)
    alone = SmashConfig({"quantizer": "half"}, device="cpu")
    with pytest.raises(SmashError, match="half failed as the first algorithm.*load it again.*boom"):
        smash(build_tiny("llama"), alone, verbose=False)


def test_progress_is_shown_unless_verbose_is_false(capsys):
    smash(build_tiny("llama"), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=True)
    assert "smashing" in capsys.readouterr().err
    smash(build_tiny("llama"), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False)
    assert capsys.readouterr().err == ""


def test_import_smashlib_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, smashlib; "
        "heavy = [m for m in ('torchao', 'bitsandbytes', 'peft', 'hqq', 'optimum.quanto', 'datasets') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
