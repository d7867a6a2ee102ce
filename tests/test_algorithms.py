"""The first four algorithms (half, torch_dynamic, torch_unstructured, torch_compile) on tiny Llama, GPT-2,
BERT, T5 and Whisper models: each test checks the algorithm's real effect (dtype and bytes, int8 layers,
zeros, compiled graphs) and that the outputs stay close to the original model's."""
from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from smashlib import SmashConfig, smash
from smashlib.errors import MissingComponentError, UnsupportedModelError
from smashlib.evaluation.metrics.size import weight_footprint
from smashlib.layers.int8_linear import Int8DynamicLinear, Int8Embedding, is_linear, reduce_range
from smashlib.targets import kept_in_float
from tests.tiny_models import TINY_MODEL_BUILDERS, build_tiny, tiny_inputs, tiny_tokenizer

MODELS = sorted(TINY_MODEL_BUILDERS)
GENERATIVE = [name for name in MODELS if name != "bert"]


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float()


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """max |output - reference| / max |reference|: one number that is small only when every logit is close."""
    return float((output.float() - reference).abs().max() / reference.abs().max())


def generate_inputs(name: str) -> dict[str, torch.Tensor]:
    inputs = tiny_inputs(name)
    if name == "whisper":
        return {"input_features": inputs["input_features"]}
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def generate(model, name: str, new_tokens: int = 4) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' notes on generation-config defaults
        return model.generate(
            **generate_inputs(name), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )


def embedding_and_norm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": tensor.clone()
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower()
        for key, tensor in module.named_parameters(recurse=False)
    }


# ====================================================================== half
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_halves_the_bytes_and_keeps_outputs_close(tiny_model_name, dtype):
    model = build_tiny(tiny_model_name)
    inputs = tiny_inputs(tiny_model_name)
    reference = logits(model, inputs)
    before = weight_footprint(model)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 on a CPU without fp16 units warns (tested below)
        smashed = smash(model, SmashConfig({"quantizer": "half", "half_dtype": dtype}, device="cpu"), verbose=False)
    target = getattr(torch, dtype)
    assert all(p.dtype == target for p in smashed.parameters() if p.is_floating_point())
    assert weight_footprint(smashed)[0] <= 0.51 * before
    with torch.no_grad():
        output = smashed(**inputs).logits  # float inputs (Whisper's features) are cast by the hook
    assert output.dtype == target
    assert relative_error(output, reference) < (3e-2 if dtype == "bfloat16" else 5e-3)


@pytest.mark.parametrize("name", GENERATIVE)
def test_half_generate_takes_the_callers_float_inputs(name):
    """Whisper's generate calls the encoder directly: the cast must happen there too."""
    smashed = smash(build_tiny(name), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False)
    tokens = generate(smashed, name)
    assert tokens.shape[0] == 2 and tokens.dtype == torch.long


def test_half_hooks_are_not_stacked_when_applied_again():
    from smashlib.registry import get_algorithm

    model = build_tiny("whisper")
    half = get_algorithm("half")
    half.apply(model, {"dtype": "bfloat16"}, None)
    half.after_loading(model, {"dtype": "bfloat16"})
    assert len(model._forward_pre_hooks) == 1 and len(model.get_encoder()._forward_pre_hooks) == 1


def test_half_float16_warns_on_a_cpu_without_fp16_units(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False, raising=False)
    with pytest.warns(UserWarning, match="bfloat16"):
        smash(build_tiny("llama"), SmashConfig({"quantizer": "half", "half_dtype": "float16"}, device="cpu"), verbose=False)


@pytest.mark.parametrize("native", [True, False])
def test_half_bfloat16_warns_only_on_a_cpu_without_bf16_units(monkeypatch, native):
    """Without AVX512-BF16 or AMX, bf16 products are emulated (0.22x fp32's prefill measured): say so."""
    monkeypatch.setattr("smashlib.algorithms.quantizer.half.has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        smash(build_tiny("llama"), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False)
    emulated = [w for w in caught if "no bfloat16 units" in str(w.message)]
    assert len(emulated) == (0 if native else 1)


# ====================================================================== torch_dynamic
@pytest.mark.parametrize("targets", ["all_linear", "all_but_outlier_layers"])
def test_torch_dynamic_makes_linears_int8(tiny_model_name, targets):
    model = build_tiny(tiny_model_name)
    inputs = tiny_inputs(tiny_model_name)
    reference = logits(model, inputs)
    before = weight_footprint(model)[0]
    kept = kept_in_float(model)  # T5's wo (smashlib.targets)
    cfg = SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": targets}, device="cpu")
    smashed = smash(model, cfg, verbose=False)
    int8 = [m for m in smashed.modules() if isinstance(m, Int8DynamicLinear)]
    assert int8 and all(m.weight.dtype == torch.int8 and m.weight_scale.dtype == torch.float32 for m in int8)
    left = [name for name, m in smashed.named_modules() if is_linear(m)]
    if targets == "all_linear":
        assert set(left) == kept  # every Linear (GPT-2's Conv1D included) is int8, but those the model keeps in float
        assert weight_footprint(smashed)[0] < 0.5 * before
    else:
        assert left and all(n.endswith(("down_proj", "fc2", "wo", "mlp.c_proj", "output.dense")) for n in left)
        assert weight_footprint(smashed)[0] < 0.7 * before
    assert relative_error(logits(smashed, inputs), reference) < 0.05


def test_torch_dynamic_keeps_a_tied_head_tied_as_one_int8_matrix():
    model = build_tiny("llama")  # tie_word_embeddings=True
    rows = model.get_input_embeddings().weight.detach().clone()
    smashed = smash(model, SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear"},
                                       device="cpu"), verbose=False)
    embedding, head = smashed.get_input_embeddings(), smashed.lm_head
    assert isinstance(embedding, Int8Embedding) and isinstance(head, Int8DynamicLinear)
    assert embedding.weight is head.weight and embedding.weight_scale is head.weight_scale
    ids = torch.arange(10)
    assert torch.allclose(embedding(ids), rows[ids], atol=rows.abs().max().item() / 127)


def test_torch_dynamic_replaces_every_path_to_a_shared_embedding():
    """T5 reaches one embedding as shared, encoder.embed_tokens and decoder.embed_tokens."""
    smashed = smash(build_tiny("t5"), SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear"},
                                                    device="cpu"), verbose=False)
    assert not [name for name, m in smashed.model.named_modules(remove_duplicate=False) if type(m) is nn.Embedding
                and not name.endswith("relative_attention_bias")]
    assert smashed.model.encoder.embed_tokens is smashed.model.shared is smashed.model.decoder.embed_tokens


def test_torch_dynamic_output_head_preset_keeps_head_and_embeddings():
    model = build_tiny("llama")
    cfg = SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_but_output_head"}, device="cpu")
    smashed = smash(model, cfg, verbose=False)
    assert type(smashed.lm_head) is nn.Linear and type(smashed.get_input_embeddings()) is nn.Embedding
    assert smashed.lm_head.weight is smashed.get_input_embeddings().weight


def test_int8_layers_keep_float32_scales_when_the_model_is_cast():
    linear = nn.Linear(32, 16)
    layer = Int8DynamicLinear.from_linear(linear)
    scales = layer.weight_scale.clone()
    x = torch.randn(3, 32)
    expected = layer(x)
    layer.to(torch.bfloat16)
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, scales)
    assert layer.bias.dtype == torch.float32 and layer.weight.dtype == torch.int8
    output = layer(x.bfloat16())
    assert output.dtype == torch.bfloat16
    assert torch.allclose(output.float(), expected, rtol=2e-2, atol=2e-2)
    embedding = Int8Embedding.tied_to(layer)
    embedding.half()
    assert embedding(torch.tensor([1, 2])).dtype == torch.float16 and embedding.weight_scale.dtype == torch.float32


def test_int8_linear_matches_float_reference():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = Int8DynamicLinear.from_linear(linear)
    x = torch.randn(5, 7, 64)
    assert layer(x).shape == (5, 7, 48)
    assert relative_error(layer(x), linear(x).detach()) < 0.02


def test_int8_linear_passes_gradients_to_its_input():
    """Straight-through gradient (frozen int8 weight): adapters can train on top, compile can trace it."""
    linear = nn.Linear(16, 8)
    layer = Int8DynamicLinear.from_linear(linear)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    expected = linear.weight.detach().sum(dim=0).expand(4, 16)
    assert torch.allclose(x.grad, expected, atol=linear.weight.abs().max().item() / 127 * 8)


def test_reduce_range_follows_vnni(monkeypatch):
    """Without VNNI, fbgemm's u8*s8 pairs saturate in int16: activations then use 7 bits."""
    reduce_range.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    assert reduce_range() is True
    reduce_range.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
    assert reduce_range() is False
    reduce_range.cache_clear()


def test_torch_dynamic_gpt2_conv1d_is_quantized_with_its_transposed_weight():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(48, 64)  # nf=48 outputs, nx=64 inputs: weight (64, 48)
    torch.nn.init.normal_(conv.weight)
    layer = Int8DynamicLinear.from_linear(conv)
    x = torch.randn(4, 64)
    assert relative_error(layer(x), conv(x).detach()) < 0.02


def test_torch_dynamic_loads_into_prepared_skeleton():
    """prepare_for_loading builds the structure the smashed state dict loads into, without data."""
    from smashlib.registry import get_algorithm

    settings = {"target_modules": "all_linear", "smoothquant": False, "smoothquant_alpha": 0.65, "calibration_samples": 4}
    smashed = smash(build_tiny("llama"), SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear"},
                                                       device="cpu"), verbose=False)
    skeleton = get_algorithm("torch_dynamic").prepare_for_loading(build_tiny("llama"), settings)
    skeleton.load_state_dict(smashed.model.state_dict(), strict=True)
    inputs = tiny_inputs("llama")
    assert torch.equal(logits(skeleton, inputs), logits(smashed, inputs))


def test_torch_dynamic_smoothquant_needs_data_and_says_so_before_touching_the_model():
    model = build_tiny("llama")
    before = copy.deepcopy(model.state_dict())
    cfg = SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_smoothquant": True}, device="cpu")
    with pytest.raises(MissingComponentError, match=r"add_tokenizer|add_data"):
        smash(model, cfg, verbose=False)
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_torch_dynamic_with_smoothquant_calibrates_and_stays_close(name):
    model = build_tiny(name)
    inputs = tiny_inputs(name)
    reference = logits(model, inputs)
    cfg = SmashConfig({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear",
                       "torch_dynamic_smoothquant": True, "torch_dynamic_calibration_samples": 4}, device="cpu")
    cfg.add_tokenizer(tiny_tokenizer())
    cfg.add_data("PydocTopics")
    kept = kept_in_float(model)
    smashed = smash(model, cfg, verbose=False)
    assert {n for n, m in smashed.named_modules() if is_linear(m)} == kept
    assert relative_error(logits(smashed, inputs), reference) < 0.05


# ====================================================================== torch_unstructured
@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_pruner_zeroes_exactly_the_sparsity_of_each_linear(tiny_model_name, method):
    sparsity = 0.3
    model = build_tiny(tiny_model_name)
    untouched = embedding_and_norm_state(model)
    head = {id(m.weight): m.weight.detach().clone() for n, m in model.named_modules() if n in {"lm_head", "proj_out"}}
    cfg = SmashConfig({"pruner": "torch_unstructured", "torch_unstructured_sparsity": sparsity,
                       "torch_unstructured_method": method}, device="cpu")
    smashed = smash(model, cfg, verbose=False)
    pruned = [(n, m) for n, m in smashed.named_modules() if is_linear(m) and n not in {"lm_head", "proj_out"}]
    assert pruned
    for name, layer in pruned:
        zeros = int((layer.weight == 0).sum())
        assert zeros == round(sparsity * layer.weight.numel()), name
        assert not hasattr(layer, "weight_orig") and not layer._forward_pre_hooks  # permanent, no mask left
    after = embedding_and_norm_state(smashed)
    assert all(torch.equal(after[key], value) for key, value in untouched.items())
    for name, module in smashed.named_modules():
        if name in {"lm_head", "proj_out"}:
            assert torch.equal(module.weight, head[id(module.weight)])


def test_pruner_magnitude_stays_close_and_beats_random(tiny_model_name):
    inputs = tiny_inputs(tiny_model_name)
    reference = logits(build_tiny(tiny_model_name), inputs)
    errors = {}
    for method in ("magnitude", "random"):
        cfg = SmashConfig({"pruner": "torch_unstructured", "torch_unstructured_sparsity": 0.1,
                           "torch_unstructured_method": method}, device="cpu")
        errors[method] = relative_error(logits(smash(build_tiny(tiny_model_name), cfg, verbose=False), inputs), reference)
    assert errors["magnitude"] < 0.1
    assert errors["magnitude"] < errors["random"]


def test_pruner_never_prunes_a_head_tied_to_the_embeddings():
    model = build_tiny("llama")  # lm_head.weight is the embedding matrix
    embedding = model.get_input_embeddings().weight.detach().clone()
    cfg = SmashConfig({"pruner": "torch_unstructured", "torch_unstructured_sparsity": 0.5,
                       "torch_unstructured_target_modules": "all_linear"}, device="cpu")
    smashed = smash(model, cfg, verbose=False)
    assert torch.equal(smashed.get_input_embeddings().weight, embedding)


# ====================================================================== torch_compile
def compile_config(backend: str = "eager", **extra) -> SmashConfig:
    return SmashConfig({"compiler": "torch_compile", "torch_compile_backend": backend, **extra}, device="cpu")


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_forward_matches_eager(tiny_model_name):
    """backend='eager' runs Dynamo's capture (the part that breaks on model code) without Inductor's
    C++ compile, which takes minutes on 2 cores; one test below runs Inductor itself."""
    model = build_tiny(tiny_model_name)
    inputs = tiny_inputs(tiny_model_name)
    reference = logits(model, inputs)
    smashed = smash(model, compile_config(), verbose=False)
    assert smashed.model._compiled_call_impl is not None
    assert torch.allclose(logits(smashed, inputs), reference, rtol=1e-5, atol=1e-5)
    assert list(smashed.model.state_dict()) == list(build_tiny(tiny_model_name).state_dict())  # names unchanged


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiler_cache_persists_per_torch_version_unless_the_caller_chose_one(monkeypatch, tmp_path):
    """The compiled code of a loaded model is found again by the next process: Inductor's cache goes to
    smashlib's cache folder (one per torch version) rather than the temporary directory; a folder the
    caller set is kept, and cache='torch' leaves torch's default alone."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("SMASHLIB_CACHE", str(tmp_path / "smashlib"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    smash(build_tiny("llama"), compile_config(), verbose=False)
    chosen = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert chosen == tmp_path / "smashlib" / "torch_compile" / f"torch-{torch.__version__}" and chosen.is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    smash(build_tiny("llama"), compile_config(), verbose=False)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    smash(build_tiny("llama"), compile_config(torch_compile_cache="torch"), verbose=False)
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir())


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", ["llama", "whisper"])
def test_compiled_generate_matches_eager_and_recompiles_a_bounded_number_of_times(name):
    from torch._dynamo.utils import counters

    expected = generate(build_tiny(name), name, new_tokens=8)
    smashed = smash(build_tiny(name), compile_config(), verbose=False)
    counters.clear()
    assert torch.equal(generate(smashed, name, new_tokens=8), expected)
    graphs = counters["stats"]["unique_graphs"]
    # one graph for the prefill, one for the first decode step, then sizes turn dynamic: no
    # recompilation per generated token (8 tokens would otherwise give 9+ graphs per frame)
    assert graphs <= 6, f"{graphs} graphs compiled for 8 tokens"


@pytest.mark.usefixtures("fresh_dynamo")
def test_a_compiled_bf16_model_has_no_graph_break_at_its_input_casting():
    """half's pre-hook casts the caller's float inputs; it used to copy forward's kwargs with copy.copy,
    which Dynamo cannot trace, splitting every compiled bf16 forward in two."""
    from torch._dynamo.utils import counters

    smashed = smash(build_tiny("llama"), compile_config(quantizer="half"), verbose=False)
    counters.clear()
    with torch.no_grad():
        smashed(**tiny_inputs("llama"))
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_decode_target_compiles_only_generates_step_over_a_static_cache():
    """torch_compile_target='decode': plain forward calls (prefill, perplexity) stay eager, generate decodes
    with a static cache through one compiled step, and the tokens are those of the eager model."""
    from torch._dynamo.utils import counters

    expected = generate(build_tiny("llama"), "llama", new_tokens=6)
    smashed = smash(build_tiny("llama"), compile_config(torch_compile_target="decode"), verbose=False)
    assert smashed.model._compiled_call_impl is None  # forward itself is not compiled
    assert smashed.model.generation_config.cache_implementation == "static"
    counters.clear()
    with torch.no_grad():
        smashed(**tiny_inputs("llama"))
    assert counters["stats"]["unique_graphs"] == 0
    assert torch.equal(generate(smashed, "llama", new_tokens=6), expected)
    assert counters["stats"]["unique_graphs"] >= 1


def test_compiled_decode_target_refuses_a_model_without_a_static_cache_before_touching_it():
    model = build_tiny("bert")
    before = copy.deepcopy(model.state_dict())
    cfg = SmashConfig({"quantizer": "half", "compiler": "torch_compile", "torch_compile_target": "decode"}, device="cpu")
    with pytest.raises(UnsupportedModelError, match="torch_compile_target='forward'"):
        smash(model, cfg, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("quantizer", ["half", "torch_dynamic"])
def test_compile_after_a_quantizer(quantizer):
    model = build_tiny("llama")
    inputs = tiny_inputs("llama")
    quantized = smash(copy.deepcopy(model), SmashConfig({"quantizer": quantizer}, device="cpu"), verbose=False)
    expected = logits(quantized, inputs)
    cfg = compile_config(quantizer=quantizer)
    smashed = smash(model, cfg, verbose=False)
    assert torch.allclose(logits(smashed, inputs), expected, rtol=1e-3, atol=1e-3)
    assert generate(smashed, "llama").shape == (2, 12)


def test_inductor_without_a_cpp_compiler_is_refused_before_smashing(monkeypatch):
    from smashlib.errors import UnsupportedDeviceError

    monkeypatch.setattr("shutil.which", lambda name: None)
    model = build_tiny("llama")
    with pytest.raises(UnsupportedDeviceError, match="C\\+\\+ compiler.*aot_eager"):
        smash(model, compile_config("inductor"), verbose=False)
    assert model._compiled_call_impl is None


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_with_inductor_matches_eager():
    model = build_tiny("llama")
    inputs = tiny_inputs("llama")
    reference = logits(model, inputs)
    smashed = smash(model, compile_config("inductor"), verbose=False)
    assert torch.allclose(logits(smashed, inputs), reference, rtol=1e-4, atol=1e-4)


# ====================================================================== the real model
def perplexity(model, batches) -> float:
    from smashlib.evaluation.metrics.quality import token_nll

    total = count = 0
    with torch.no_grad():
        for batch in batches:
            nll, tokens = token_nll(model, batch, model(**batch).logits)
            total, count = total + nll, count + tokens
    return math.exp(total / count)


@pytest.mark.real_model
def test_half_and_torch_dynamic_shrink_smollm2_and_keep_its_perplexity(smollm2_path):
    """fp32 vs bf16 vs torch_dynamic (defaults) on 4 x 128 tokens of the PydocTopics test split."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smashlib.data import calibration_batches

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    data = SmashConfig(device="cpu")
    data.add_tokenizer(tokenizer)
    data.add_data("PydocTopics")
    batches = calibration_batches(data.components, n_samples=4, seq_len=128, batch_size=4, split="test")
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    fp32_bytes, fp32_ppl = weight_footprint(model)[0], perplexity(model, batches)
    results = {}
    for label, values in {"bf16": {"quantizer": "half"}, "torch_dynamic": {"quantizer": "torch_dynamic"}}.items():
        smashed = smash(copy.deepcopy(model), SmashConfig(values, device="cpu"), verbose=False)
        results[label] = (weight_footprint(smashed)[0] / fp32_bytes, perplexity(smashed, batches) / fp32_ppl)
        del smashed
    print(f"\nfp32 perplexity {fp32_ppl:.3f}; " + "; ".join(
        f"{label}: bytes x{size:.3f}, perplexity x{ratio:.4f}" for label, (size, ratio) in results.items()))
    assert results["bf16"][0] < 0.51 and results["bf16"][1] < 1.02
    # without VNNI, fbgemm's activations use 7 bits (reduce_range): x1.30 measured on an AVX2 EPYC, x1.07 with VNNI
    dynamic_limit = 1.35 if reduce_range() else 1.2
    assert results["torch_dynamic"][0] < 0.45 and results["torch_dynamic"][1] < dynamic_limit
