"""torchao: weights stored as int8/float8 (bytes shrink), outputs close to fp32, exact save/load of the
tensor subclasses through plain tensors, CUDA-only recipes refused on CPU, SmoothQuant wiring."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchao", reason="torchao is not installed: pip install 'smashlib[torchao]'")

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.errors import HyperparameterValueError, MissingComponentError, UnsupportedDeviceError
from tests.tiny_models import build_tiny, tiny_inputs, tiny_tokenizer

STORED_DTYPE = {"int8wo": torch.int8, "int8dq": torch.int8, "fp8wo": torch.float8_e4m3fn}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def linear_bytes(state: dict, prefix_filter: str) -> int:
    return sum(t.numel() * t.element_size() for name, t in state.items() if prefix_filter in name)


@pytest.mark.parametrize("quant_type", list(STORED_DTYPE))
def test_weights_are_stored_low_bit_and_outputs_stay_close(quant_type, tmp_path):
    model = build_tiny("llama")
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        reference = model(**inputs).logits
    fp32_bytes = linear_bytes(model.state_dict(), "mlp.")
    smashed = smash(model, SmashConfig({"quantizer": "torchao", "torchao_quant_type": quant_type}), verbose=False)
    state = smashed.model.state_dict()
    assert state["model.layers.0.mlp.up_proj.weight.qdata"].dtype == STORED_DTYPE[quant_type]
    assert "model.layers.0.mlp.up_proj.weight" not in state  # the subclass is saved as its inner tensors
    assert linear_bytes(state, "mlp.") < 0.3 * fp32_bytes  # 1 byte a weight plus a scale per row
    assert type(smashed.model.lm_head.weight) is torch.nn.Parameter  # output head kept by default
    with torch.no_grad():
        out = smashed(**inputs).logits
    assert relative_error(out, reference) < 0.05

    smashed.save_pretrained(tmp_path)
    loaded = SmashedModel.from_pretrained(tmp_path)
    with torch.inference_mode():
        assert torch.equal(loaded(**inputs).logits, out)


def test_bert_and_quantizing_the_output_head_too():
    model = build_tiny("bert")
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        reference = model(**inputs).logits
    config = SmashConfig({"quantizer": "torchao", "torchao_target_modules": "all_linear"})
    smashed = smash(model, config, verbose=False)
    assert type(smashed.model.classifier.weight).__name__ == "Int8Tensor"
    with torch.no_grad():
        assert relative_error(smashed(**inputs).logits, reference) < 0.05


@pytest.mark.parametrize("quant_type", ["int4wo", "fp8dq"])
def test_cuda_only_recipes_are_refused_on_cpu(quant_type):
    model = build_tiny("llama")
    config = SmashConfig({"quantizer": "torchao", "torchao_quant_type": quant_type}, device="cpu")
    with pytest.raises(UnsupportedDeviceError, match="CUDA"):
        smash(model, config, verbose=False)
    assert type(model.model.layers[0].mlp.up_proj.weight) is torch.nn.Parameter  # untouched


def test_smoothquant_needs_data_and_is_only_for_int8dq():
    with pytest.raises(MissingComponentError, match="add_tokenizer|add_data"):
        smash(build_tiny("llama"), SmashConfig({"quantizer": "torchao", "torchao_quant_type": "int8dq",
                                                "torchao_smoothquant": True}), verbose=False)
    config = SmashConfig({"quantizer": "torchao", "torchao_smoothquant": True})  # int8wo: nothing to smooth for
    config.add_tokenizer(tiny_tokenizer())
    config.add_data("PydocTopics")
    with pytest.raises(HyperparameterValueError, match="int8dq"):
        smash(build_tiny("llama"), config, verbose=False)


def test_int8dq_with_smoothquant_runs_and_round_trips(tmp_path):
    model = build_tiny("llama")
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        reference = model(**inputs).logits
    config = SmashConfig({"quantizer": "torchao", "torchao_quant_type": "int8dq", "torchao_smoothquant": True,
                          "torchao_calibration_samples": 4})
    config.add_tokenizer(tiny_tokenizer())
    config.add_data("PydocTopics")
    smashed = smash(model, config, verbose=False)
    with torch.no_grad():
        out = smashed(**inputs).logits
    assert relative_error(out, reference) < 0.05
    smashed.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(SmashedModel.from_pretrained(tmp_path)(**inputs).logits, out)


def test_combines_with_torch_compile():
    model = build_tiny("llama")
    inputs = tiny_inputs("llama")
    config = SmashConfig({"quantizer": "torchao", "compiler": "torch_compile", "torch_compile_backend": "aot_eager"})
    smashed = smash(model, config, verbose=False)
    with torch.no_grad():
        compiled = smashed(**inputs).logits
        eager = smashed.model.forward(**inputs).logits  # nn.Module.compile wraps __call__, not forward
    assert torch.allclose(compiled, eager, atol=1e-4)


def test_gpt2_conv1d_model_is_refused_with_a_pointer():
    from smashlib.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="Conv1D.*hqq or torch_dynamic"):
        smash(build_tiny("gpt2"), SmashConfig({"quantizer": "torchao"}), verbose=False)
