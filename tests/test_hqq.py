"""hqq: weights really bit-packed, outputs close to fp32, the int4 CPU kernel equal to hqq's own math,
gradients through it, exact save/load, clear errors for settings that cannot run."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("hqq", reason="hqq is not installed: pip install 'smashlib[hqq]'")

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.errors import HyperparameterValueError
from smashlib.layers.hqq_linear import HQQPackedLinear
from tests.tiny_models import build_tiny, tiny_inputs


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def smashed_llama(**settings):
    model = build_tiny("llama")
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        reference = model(**inputs).logits
    config = SmashConfig({"quantizer": "hqq", **{f"hqq_{k}": v for k, v in settings.items()}})
    return smash(model, config, verbose=False), inputs, reference


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_weights_are_bit_packed_and_outputs_stay_close(bits):
    smashed, inputs, reference = smashed_llama(weight_bits=bits)
    layers = [m for m in smashed.model.modules() if isinstance(m, HQQPackedLinear)]
    assert len(layers) == 14  # 7 Linears in each of 2 blocks; the tied output head stays full precision
    for layer in layers:
        assert layer.W_q.dtype == torch.uint8
        assert layer.W_q.numel() * 8 == layer.in_features * layer.out_features * bits
    assert not any(type(m) is torch.nn.Linear for n, m in smashed.model.named_modules() if n != "lm_head")
    with torch.no_grad():
        error = relative_error(smashed(**inputs).logits, reference)
    assert error < {8: 0.02, 4: 0.2, 2: 0.8}[bits]


def test_fewer_bits_cost_more_error():
    errors = {}
    for bits in (8, 4, 3):
        smashed, inputs, reference = smashed_llama(weight_bits=bits, backend="dequantize")
        with torch.no_grad():
            errors[bits] = relative_error(smashed(**inputs).logits, reference)
    assert errors[8] < errors[4] < errors[3]


def test_int4_kernel_matches_hqq_dequantized_math():
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96)
    layer = HQQPackedLinear.from_weight(linear.weight, linear.bias, 4, 64, backend="int4_tinygemm")
    x = torch.randn(3, 5, 128)
    reference = torch.nn.functional.linear(x, layer.dequantize(), layer.bias)
    out = layer(x)
    assert layer._kernel is not None  # the int4 kernel ran, not the fallback
    assert relative_error(out, reference) < 1e-2  # bf16 activations in the kernel


def test_gradients_flow_through_the_int4_kernel():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=False)
    layer = HQQPackedLinear.from_weight(linear.weight, None, 4, 64, backend="int4_tinygemm")
    x = torch.randn(4, 64, requires_grad=True)
    layer(x).sum().backward()
    expected = torch.ones(4, 32) @ layer.dequantize()
    assert relative_error(x.grad, expected) < 1e-2


def test_save_and_load_are_exact(tmp_path):
    smashed, inputs, _ = smashed_llama(weight_bits=4)
    with torch.no_grad():
        before = smashed(**inputs).logits
    smashed.save_pretrained(tmp_path)
    loaded = SmashedModel.from_pretrained(tmp_path)
    with torch.inference_mode():
        assert torch.equal(loaded(**inputs).logits, before)
    assert all(m.backend == "int4_tinygemm" for m in loaded.model.modules() if isinstance(m, HQQPackedLinear))


def test_gpt2_conv1d_layers_are_quantized():
    model = build_tiny("gpt2")
    inputs = tiny_inputs("gpt2")
    with torch.no_grad():
        reference = model(**inputs).logits
    smashed = smash(model, SmashConfig({"quantizer": "hqq", "hqq_weight_bits": 8}), verbose=False)
    assert sum(isinstance(m, HQQPackedLinear) for m in smashed.model.modules()) == 8  # c_attn, c_proj, c_fc, mlp.c_proj
    with torch.no_grad():
        assert relative_error(smashed(**inputs).logits, reference) < 0.02


def test_int4_kernel_needs_four_bits():
    config = SmashConfig({"quantizer": "hqq", "hqq_weight_bits": 8, "hqq_backend": "int4_tinygemm"})
    with pytest.raises(HyperparameterValueError, match="hqq_weight_bits=4"):
        smash(build_tiny("llama"), config, verbose=False)
