"""SmoothQuant (smashlib.smoothquant): exact on the float model, less int8 error, wrong folds refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from smashlib.layers.int8_linear import Int8DynamicLinear
from smashlib.smoothquant import find_folds, smooth
from tests.tiny_models import build_tiny, tiny_inputs


def batches(name: str) -> list[dict[str, torch.Tensor]]:
    return [tiny_inputs(name), tiny_inputs(name, batch=3, length=12)]


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(
    "name, rules",
    [
        ("llama", {"input_layernorm", "post_attention_layernorm", "up_proj", "v_proj"}),
        ("t5", {"layer_norm", "v", "wi"}),
        ("whisper", {"self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm", "v_proj"}),
    ],
)
def test_smoothing_leaves_the_float_model_unchanged(name, rules):
    model = build_tiny(name)
    inputs = tiny_inputs(name)
    reference = logits(model, inputs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folds = smooth(model, batches(name), alpha=0.5)
    assert {fold.rule.source for fold in folds} == rules
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())  # weights did move
    assert torch.allclose(logits(model, inputs), reference, rtol=1e-4, atol=1e-5)


def test_architectures_without_a_fitting_rule_are_left_alone():
    for name in ("gpt2", "bert"):  # GPT-2's Conv1D layers, BERT's post-norm residuals: nothing to fold
        model = build_tiny(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert smooth(model, batches(name)) == []
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_grouped_query_attention_maps_each_value_channel_to_its_query_heads():
    model = build_tiny("llama")  # 4 query heads, 2 key/value heads of 16 channels
    fold = next(f for f in find_folds(model) if f.rule.source == "v_proj")
    index = fold.channel_of_input
    assert index.shape == (64,) and int(index.max()) == 31
    assert torch.equal(index[:16], torch.arange(16)) and torch.equal(index[16:32], torch.arange(16))
    assert torch.equal(index[32:48], torch.arange(16, 32))


def add_outlier_channels(model: nn.Module, channels=(3, 17), factor: float = 60.0) -> None:
    """Give every q/k/v and gate/up input a few outlier channels (as trained LLMs have) without changing
    the function: the norm weight grows by ``factor`` on those channels, the Linears' columns shrink."""
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, linears in (
                (layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)),
                (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj)),
            ):
                for channel in channels:
                    norm.weight[channel] *= factor
                    for linear in linears:
                        linear.weight[:, channel] /= factor


def int8_error(model: nn.Module, inputs) -> float:
    from smashlib.algorithms.quantizer.torch_dynamic import quantize_linears

    from smashlib.targets import resolve_targets

    reference = logits(model, inputs)
    quantize_linears(model, resolve_targets(model, "all_but_output_head"))
    return float((logits(model, inputs) - reference).abs().max() / reference.abs().max())


def test_smoothing_reduces_the_int8_error_of_activation_outliers():
    inputs = tiny_inputs("llama", batch=4, length=16)
    plain = build_tiny("llama")
    add_outlier_channels(plain)
    smoothed = build_tiny("llama")
    add_outlier_channels(smoothed)
    smooth(smoothed, batches("llama") + [inputs], alpha=0.5)
    plain_error, smoothed_error = int8_error(plain, inputs), int8_error(smoothed, inputs)
    assert smoothed_error < 0.5 * plain_error, (plain_error, smoothed_error)


class PostNormBlock(nn.Module):
    """Named like a Llama block, but the norm's output also feeds the residual: folding into it is wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(16)
        self.self_attn = nn.Module()
        self.self_attn.q_proj, self.self_attn.k_proj, self.self_attn.v_proj = (nn.Linear(16, 16) for _ in range(3))

    def forward(self, x):
        h = self.input_layernorm(x)
        attention = self.self_attn
        return h + attention.q_proj(h) * attention.k_proj(h) + attention.v_proj(h)


def test_a_fold_that_changes_the_outputs_is_undone_with_a_warning():
    torch.manual_seed(0)
    model = PostNormBlock().eval()
    with torch.no_grad():
        model.input_layernorm.weight.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [torch.randn(4, 16) * torch.linspace(0.1, 20, 16)]
    with pytest.warns(UserWarning, match="input_layernorm -> self_attn.q_proj"):
        assert smooth(model, data) == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_only_smooths_layers_that_will_be_quantized():
    model = build_tiny("llama")
    keep = {f"model.layers.{i}.mlp.down_proj" for i in range(2)}
    folds = smooth(model, batches("llama"), only=keep)
    assert [fold.rule.source for fold in folds] == ["up_proj", "up_proj"]


def test_smoothing_a_bfloat16_model():
    model = build_tiny("llama").to(torch.bfloat16)
    inputs = tiny_inputs("llama")
    reference = logits(model, inputs).float()
    assert len(smooth(model, batches("llama"))) == 8
    assert torch.allclose(logits(model, inputs).float(), reference, rtol=0.05, atol=0.05)


def test_bad_arguments_are_refused():
    model = build_tiny("llama")
    with pytest.raises(ValueError, match="alpha"):
        smooth(model, batches("llama"), alpha=1.5)
    with pytest.raises(ValueError, match="calibration batch"):
        smooth(model, [])


def test_int8_layer_is_what_smoothing_helps():
    """The premise, on one layer: an input with an outlier channel loses precision in int8, and the
    same product computed from smoothed input and weight loses much less."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=False)
    x = torch.randn(256, 64)
    x[:, 5] *= 100.0
    exact = linear(x).detach()
    plain = Int8DynamicLinear.from_linear(linear)(x)
    s = (x.abs().amax(0) ** 0.5) / (linear.weight.detach().abs().amax(0) ** 0.5)
    smoothed_linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        smoothed_linear.weight.copy_(linear.weight * s)
    smoothed = Int8DynamicLinear.from_linear(smoothed_linear)(x / s)
    assert (smoothed - exact).norm() < 0.5 * (plain - exact).norm()
