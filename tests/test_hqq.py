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


def test_a_classifier_head_the_kernel_cannot_take_runs_dequantized_and_smash_completes():
    """issue 11 item 4: a BERT classifier with 2 outputs (not a multiple of 16) converted 13 layers, then raised."""
    import transformers

    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                     vocab_size=256, max_position_embeddings=128, num_labels=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    inputs = {"input_ids": torch.randint(3, 256, (2, 8))}
    with torch.no_grad():
        reference = model(**inputs).logits
    smashed = smash(model, SmashConfig({"quantizer": "hqq"}, device="cpu"), verbose=False)
    assert isinstance(smashed.model.classifier, HQQPackedLinear) and smashed.model.classifier.backend == "dequantize"
    assert smashed.model.bert.encoder.layer[0].attention.self.query.backend == "int4_tinygemm"
    with torch.no_grad():
        assert ((smashed(**inputs).logits - reference).norm() / reference.norm()) < 0.5


def test_with_the_kernel_forced_layers_it_cannot_take_are_left_as_they_are():
    import transformers

    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                                     vocab_size=256, max_position_embeddings=128, num_labels=2)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    smashed = smash(model, SmashConfig({"quantizer": "hqq", "hqq_backend": "int4_tinygemm"}, device="cpu"), verbose=False)
    assert type(smashed.model.classifier) is torch.nn.Linear


def test_a_failing_layer_puts_every_swapped_layer_back(monkeypatch):
    model = build_tiny("llama")
    before = {name: type(m) for name, m in model.named_modules()}
    calls = {"n": 0}
    real = HQQPackedLinear.from_weight

    def fail_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(HQQPackedLinear, "from_weight", fail_on_third)
    with pytest.raises(Exception, match="boom"):
        smash(model, SmashConfig({"quantizer": "hqq"}, device="cpu"), verbose=False)
    assert {name: type(m) for name, m in model.named_modules()} == before
