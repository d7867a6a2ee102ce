"""quanto: weights stored low-bit, outputs close to fp32, no_grad and inference_mode both work, calibrated
int8 activations need (and use) data, exact save/load without calibration."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("optimum.quanto", reason="optimum-quanto is not installed: pip install 'smashlib[quanto]'")

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.errors import HyperparameterValueError, MissingComponentError
from tests.tiny_models import build_tiny, tiny_inputs, tiny_tokenizer

#: weights -> (inner tensor holding the codes, its dtype, bits a weight on disk, tolerated relative error)
WEIGHTS = {
    "qint8": ("weight._data", torch.int8, 8, 0.03),
    "qfloat8": ("weight._data", torch.float8_e4m3fn, 8, 0.05),
    "qint4": ("weight._data._data", torch.uint8, 4, 0.2),
}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def calibrated_config(**settings) -> SmashConfig:
    config = SmashConfig({"quantizer": "quanto", **{f"quanto_{k}": v for k, v in settings.items()}})
    config.add_tokenizer(tiny_tokenizer())
    config.add_data("PydocTopics")
    return config


@pytest.mark.parametrize("weights", list(WEIGHTS))
def test_weights_low_bit_close_and_exact_after_loading(weights, tmp_path):
    key, dtype, bits, tolerance = WEIGHTS[weights]
    model = build_tiny("llama")
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        reference = model(**inputs).logits
    smashed = smash(model, SmashConfig({"quantizer": "quanto", "quanto_weights": weights}), verbose=False)
    state = smashed.model.state_dict()
    codes = state[f"model.layers.0.mlp.up_proj.{key}"]
    assert codes.dtype == dtype
    assert codes.numel() * codes.element_size() * 8 == 64 * 128 * bits  # up_proj is 64 -> 128
    assert "lm_head.weight" not in {k for k in state if "._data" in k}
    with torch.no_grad():
        out = smashed(**inputs).logits
    with torch.inference_mode():
        assert torch.equal(smashed(**inputs).logits, out)
    assert relative_error(out, reference) < tolerance

    smashed.save_pretrained(tmp_path)
    loaded = SmashedModel.from_pretrained(tmp_path)
    with torch.inference_mode():
        assert torch.equal(loaded(**inputs).logits, out)


def test_bert():
    model = build_tiny("bert")
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        reference = model(**inputs).logits
    smashed = smash(model, SmashConfig({"quantizer": "quanto"}), verbose=False)
    with torch.inference_mode():
        assert relative_error(smashed(**inputs).logits, reference) < 0.03


def test_quantized_activations_need_data_before_anything_changes():
    model = build_tiny("llama")
    with pytest.raises(MissingComponentError, match="add_tokenizer|add_data"):
        smash(model, SmashConfig({"quantizer": "quanto", "quanto_activations": "qint8"}), verbose=False)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear


def test_smoothquant_without_quantized_activations_is_refused():
    with pytest.raises(HyperparameterValueError, match="quanto_activations='qint8'"):
        smash(build_tiny("llama"), calibrated_config(smoothquant=True), verbose=False)


@pytest.mark.parametrize("smoothquant", [False, True])
def test_calibrated_int8_activations(smoothquant, tmp_path):
    model = build_tiny("llama")
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        reference = model(**inputs).logits
    config = calibrated_config(activations="qint8", smoothquant=smoothquant, calibration_samples=4)
    smashed = smash(model, config, verbose=False)
    up_proj = smashed.model.model.layers[0].mlp.up_proj
    assert up_proj.activation_qtype is not None and float(up_proj.input_scale) != 1.0  # calibrated
    with torch.inference_mode():
        out = smashed(**inputs).logits
    # static per-tensor input scales calibrated on text, applied to random ids: looser than weight-only
    assert relative_error(out, reference) < 0.1
    smashed.save_pretrained(tmp_path)
    with torch.inference_mode():
        assert torch.equal(SmashedModel.from_pretrained(tmp_path)(**inputs).logits, out)
