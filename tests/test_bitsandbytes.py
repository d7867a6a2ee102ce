"""llm_int8 and bnb_4bit: weights really stored in 8 / 4 bits, outputs close to fp32, and save -> load exact,
before and after inference (bitsandbytes 0.50 repacks 4-bit weights in place at the first CPU forward pass).
"""
from __future__ import annotations

import importlib.metadata

import pytest
import torch
from torch import nn

from smashlib import MissingPackageError, SmashConfig, SmashedModel, smash
from smashlib.registry import get_algorithm
from tests.tiny_models import TINY_MODEL_BUILDERS, build_tiny, tiny_inputs


@pytest.fixture
def bnb():
    return pytest.importorskip("bitsandbytes", reason="llm_int8 and bnb_4bit need `pip install 'smashlib[bnb]'`")


@pytest.fixture
def bnb_layers(bnb):
    from smashlib.layers import bnb_linear

    return bnb_linear


def run(model, name: str) -> torch.Tensor:
    with torch.no_grad():
        output = model(**tiny_inputs(name))
    return output.logits


def last_hidden_state(model, name: str) -> torch.Tensor:
    """What the quantized layers produce, before a (tiny, random) head scales it down to a few logits."""
    with torch.no_grad():
        return model(**tiny_inputs(name), output_hidden_states=True).hidden_states[-1]


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.float() - reference).norm() / reference.norm())


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a state dict, each storage counted once (tied embeddings and heads share one)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()}
    return sum(storages.values())


def assert_same_state(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for key, a in before.items():
        b = after[key]
        assert a.dtype == b.dtype and a.shape == b.shape, f"{key}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        assert torch.equal(a, b), f"{key} changed"


def cpu_repacks_4bit() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


# ====================================================================== what smash() produces
#: (values, layer class name, weight dtype, bits per weight value, relative error bound on the logits)
RECIPES = {
    "llm_int8": ({"quantizer": "llm_int8"}, "Linear8bitLt", torch.int8, 8, 0.03),
    "llm_int8_all_int8": ({"quantizer": "llm_int8", "llm_int8_outlier_threshold": 0.0}, "Linear8bitLt", torch.int8, 8, 0.03),
    "bnb_4bit": ({"quantizer": "bnb_4bit"}, "Linear4bit", torch.uint8, 4, 0.25),
    "bnb_4bit_fp4_fp32": (
        {"quantizer": "bnb_4bit", "bnb_4bit_quant_type": "fp4", "bnb_4bit_double_quant": False,
         "bnb_4bit_compute_dtype": "float32", "bnb_4bit_blocksize": 128},
        "Linear4bit", torch.uint8, 4, 0.35,  # FP4 has a coarser grid than NF4 for normally distributed weights
    ),
}


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_weights_are_stored_quantized_and_outputs_stay_close(bnb, recipe, architecture):
    values, layer_class, weight_dtype, bits, max_error = RECIPES[recipe]
    model = build_tiny(architecture)
    reference = last_hidden_state(model, architecture)
    fp32_bytes = state_bytes(model.state_dict())
    smashed = smash(model, SmashConfig(values, device="cpu"), verbose=False)

    quantized = {name: m for name, m in smashed.model.named_modules() if type(m).__name__ == layer_class}
    assert quantized, "no layer was quantized"
    head = smashed.model.get_output_embeddings() if hasattr(smashed.model, "get_output_embeddings") else None
    if head is not None:
        assert type(head) is nn.Linear, "the output head stays in full precision by default"
    state = smashed.model.state_dict()
    for name, module in quantized.items():
        weight = state[f"{name}.weight"]
        assert weight.dtype == weight_dtype
        assert weight.numel() * 8 == module.in_features * module.out_features * bits, f"{name} is not {bits}-bit"
        assert not module.training, "quantized layers keep the model's eval mode"
    # scales, quant maps and the embeddings (kept in fp32) add to the weights; still well under fp32
    assert state_bytes(state) < (0.75 if bits == 8 else 0.6) * fp32_bytes
    assert relative_error(last_hidden_state(smashed, architecture), reference) < max_error


def test_output_head_is_quantized_when_asked(bnb):
    smashed = smash(build_tiny("gpt2"), SmashConfig({"quantizer": "llm_int8", "llm_int8_target_modules": "all_linear"}), verbose=False)
    assert type(smashed.model.lm_head).__name__ == "Linear8bitLt"


def test_a_model_without_linear_layers_is_refused(bnb):
    from smashlib.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="nn.Linear"):
        smash(nn.Sequential(nn.Conv2d(3, 3, 1)), SmashConfig({"quantizer": "bnb_4bit"}, device="cpu"), verbose=False)


def test_missing_bitsandbytes_is_named(monkeypatch):
    real_version = importlib.metadata.version

    def version(name):
        if name == "bitsandbytes":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    for name in ("llm_int8", "bnb_4bit"):
        with pytest.raises(MissingPackageError, match=r"bitsandbytes>=0\.45.*smashlib\[bnb\]"):
            smash(build_tiny("llama"), SmashConfig({"quantizer": name}, device="cpu"), verbose=False)


@pytest.mark.parametrize("quant_type, max_weight_error", [("nf4", 0.11), ("fp4", 0.16)])
@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float32])
def test_4bit_layer_computes_with_its_dequantized_weight(bnb_layers, quant_type, max_weight_error, compute_dtype):
    import bitsandbytes as bnb

    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    layer = bnb_layers.Linear4bit.from_weight(linear.weight, linear.bias, quant_type=quant_type, compute_dtype=compute_dtype).eval()
    dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert relative_error(dequantized, linear.weight.detach()) < max_weight_error
    x = torch.randn(4, 256)
    expected = torch.nn.functional.linear(x, dequantized, linear.bias.detach())
    with torch.no_grad():
        out = layer(x)
    assert out.dtype == torch.float32
    assert relative_error(out, expected) < (1e-2 if compute_dtype == torch.bfloat16 else 1e-5)


def test_int8_layer_computes_with_its_dequantized_weight(bnb_layers):
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    layer = bnb_layers.Linear8bitLt.from_weight(linear.weight, linear.bias, threshold=0.0).eval()
    dequantized = layer.weight.data.float() * (layer.weight.SCB[:, None] / 127)
    assert relative_error(dequantized, linear.weight.detach()) < 0.01
    x = torch.randn(4, 256)
    with torch.no_grad():
        assert relative_error(layer(x), linear(x)) < 0.02


# ====================================================================== the 4-bit layer after CPU inference
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [True, False])
def test_4bit_state_dict_is_exact_after_cpu_inference(bnb_layers, quant_type, double_quant):
    """bitsandbytes' own Linear4bit saves a transposed bf16 absmax (or a re-quantized one) once a CPU
    forward pass has repacked it, and corrupts its live weights while saving; smashlib's does neither."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 96)
    layer = bnb_layers.Linear4bit.from_weight(
        linear.weight, linear.bias, quant_type=quant_type, double_quant=double_quant, compute_dtype=torch.bfloat16
    ).eval()
    before = {key: value.clone() for key, value in layer.state_dict().items()}
    x = torch.randn(3, 128)
    with torch.no_grad():
        first = layer(x)
    if cpu_repacks_4bit():
        assert layer._packed_for_cpu(), "this CPU has AVX512-BF16: bitsandbytes should have repacked the layer"
    assert_same_state(before, layer.state_dict())
    with torch.no_grad():
        assert torch.equal(layer(x), first), "saving changed the live layer"

    with torch.device("meta"):
        shell = bnb_layers.Linear4bit(128, 96, quant_type=quant_type, double_quant=double_quant, compute_dtype=torch.bfloat16)
    shell.load_state_dict(before, assign=True, strict=True)
    shell.eval()
    with torch.no_grad():
        assert torch.equal(shell(x), first)
    assert_same_state(before, shell.state_dict())


def test_4bit_layer_moves_without_losing_its_weights(bnb_layers):
    """A move (``.to``, ``.cpu()``) undoes the CPU repacking exactly instead of carrying the packed layout."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 64)
    layer = bnb_layers.Linear4bit.from_weight(linear.weight, linear.bias).eval()
    before = {key: value.clone() for key, value in layer.state_dict().items()}
    x = torch.randn(2, 64)
    with torch.no_grad():
        first = layer(x)
        layer.to("cpu")
        assert not layer._packed_for_cpu()
        assert_same_state(before, layer.state_dict())
        assert torch.equal(layer(x), first)


def test_4bit_shapes_the_cpu_kernel_cannot_take_use_the_plain_path(bnb_layers):
    """bitsandbytes' repacking asserts out_features % 32 == 0: such layers (a 3-label classifier) run unpacked."""
    linear = nn.Linear(64, 3)
    layer = bnb_layers.Linear4bit.from_weight(linear.weight, linear.bias).eval()
    with torch.no_grad():
        out = layer(torch.randn(2, 64))
    assert out.shape == (2, 3) and not layer._packed_for_cpu()


def test_int8_state_dict_is_exact_after_inference_and_loads_into_a_meta_shell(bnb_layers):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = bnb_layers.Linear8bitLt.from_weight(linear.weight, linear.bias, threshold=2.0).eval()
    before = {key: value.clone() for key, value in layer.state_dict().items()}
    x = torch.randn(3, 64) * 2  # some activations above the threshold: the mixed float16 path runs
    with torch.no_grad():
        first = layer(x)
    assert_same_state(before, layer.state_dict())
    with torch.device("meta"):
        shell = bnb_layers.Linear8bitLt(64, 48, threshold=2.0)
    shell.load_state_dict(before, assign=True, strict=True)
    with torch.no_grad():
        assert torch.equal(shell.eval()(x), first)


# ====================================================================== through save_pretrained / from_pretrained
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("values", [
    {"quantizer": "bnb_4bit"},
    {"quantizer": "bnb_4bit", "bnb_4bit_quant_type": "fp4", "bnb_4bit_double_quant": False, "bnb_4bit_target_modules": "all_linear"},
    {"quantizer": "llm_int8", "llm_int8_target_modules": "all_linear"},
], ids=["nf4", "fp4-head", "int8-head"])
def test_save_load_is_exact_after_inference(bnb, architecture, values, tmp_path):
    smashed = smash(build_tiny(architecture), SmashConfig(values, device="cpu"), verbose=False)
    state = {key: value.clone() for key, value in smashed.model.state_dict().items()}
    first = run(smashed, architecture)  # repacks the 4-bit layers on AVX512-BF16 CPUs
    assert torch.equal(run(smashed, architecture), first)
    smashed.save_pretrained(tmp_path / "saved")
    assert_same_state(state, smashed.model.state_dict())
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(run(loaded, architecture), first)
    assert torch.equal(run(smashed, architecture), first), "saving changed the smashed model"
    assert [type(m).__name__ for m in loaded.model.modules()] == [type(m).__name__ for m in smashed.model.modules()]
    # loaded and run again, it saves the same bytes
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "saved" / "model.safetensors").read_bytes()


def test_prepare_for_loading_rebuilds_the_structure_on_meta(bnb):
    """prepare_for_loading makes shells of the saved shapes without allocating memory."""
    for name, values in (("bnb_4bit", {"quantizer": "bnb_4bit"}), ("llm_int8", {"quantizer": "llm_int8"})):
        config = SmashConfig(values, device="cpu")
        algorithm = get_algorithm(name)
        saved = smash(build_tiny("llama"), config, verbose=False).model.state_dict()
        with torch.device("meta"):
            skeleton = TINY_MODEL_BUILDERS["llama"]()
        skeleton = algorithm.prepare_for_loading(skeleton, config.settings_for(algorithm))
        shells = skeleton.state_dict()
        for key, tensor in shells.items():
            assert tensor.is_meta
            assert key in saved and tuple(saved[key].shape) == tuple(tensor.shape), key
            assert saved[key].dtype == tensor.dtype, key


@pytest.mark.real_model
def test_smollm2_4bit_and_int8_quality_and_size(bnb, smollm2_path, pydoc_texts):
    """Bounded: one 96-token pass through SmolLM2-135M per model. Bounds are loose on purpose
    (measured: int8 +3.5 %, nf4 +35 % on 1,000 tokens): they catch broken weights, not a percent."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    ids = tokenizer(pydoc_texts[3], return_tensors="pt")["input_ids"][:, :96]

    def perplexity(model) -> float:
        with torch.no_grad():
            return float(torch.exp(model(input_ids=ids, labels=ids).loss))

    base = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    fp32 = perplexity(base)
    fp32_bytes = 4 * sum(p.numel() for p in base.parameters())
    for values, max_ratio, max_size in (
        ({"quantizer": "llm_int8"}, 1.10, 0.45),  # the tied embedding / head (113 MB in fp32) stays fp32
        ({"quantizer": "bnb_4bit"}, 1.60, 0.35),
    ):
        smashed = smash(copy.deepcopy(base), SmashConfig(values, device="cpu"), verbose=False)
        assert perplexity(smashed) < max_ratio * fp32
        assert state_bytes(smashed.model.state_dict()) < max_size * fp32_bytes  # what save_pretrained writes


def test_blocksize_32_on_cuda_needs_a_recent_bitsandbytes(bnb, monkeypatch):
    """Checked before smashing (the CPU path takes any block size; CUDA kernels for 32 came in 0.50)."""
    algorithm = get_algorithm("bnb_4bit")
    settings = SmashConfig({"quantizer": "bnb_4bit", "bnb_4bit_blocksize": 32}).settings_for(algorithm)
    algorithm.check_settings(settings, "cpu")
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "0.49.0" if name == "bitsandbytes" else real_version(name)
    )
    with pytest.raises(MissingPackageError, match=r"blocksize=32 on CUDA needs bitsandbytes>=0\.50 \(found 0\.49\.0\)"):
        algorithm.check_settings(settings, "cuda")
    algorithm.check_settings({**settings, "blocksize": 64}, "cuda")
