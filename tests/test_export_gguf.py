"""GGUF export: GPTQ on llama.cpp's grids read back by the gguf package to exactly smashlib's weights,
Llama metadata and tokenizer as llama.cpp's converter writes them, clear refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from smashlib import SmashConfig, smash
from smashlib.errors import SmashConfigError, UnknownNameError, UnsupportedExportError
from smashlib.gptq.block_grids import block_grid_parameters, representable_scale
from smashlib.gptq.solver import gptq_quantize, rtn_quantize
from smashlib.layers.packed_int import PackedLinear
from tests.tiny_models import build_tiny, tiny_tokenizer

gguf = pytest.importorskip("gguf")

FAST = {"gptq_calibration_samples": 8, "gptq_sequence_length": 128}
BITS = {"q8_0": 8, "q4_0": 4, "q4_1": 4}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def smash_on_grid(tokenizer, grid: str, **values):
    config = SmashConfig(
        {"quantizer": "gptq", "gptq_grid": grid, "gptq_weight_bits": BITS[grid], **FAST, **values}, device="cpu"
    )
    config.add_tokenizer(tokenizer)
    config.add_data("PydocTopics")
    return smash(build_tiny("llama"), config, verbose=False)


def read(path):
    reader = gguf.GGUFReader(str(path))
    return reader, {tensor.name: tensor for tensor in reader.tensors}


def dequantized(tensor) -> np.ndarray:
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


def undo_rotary_order(array: np.ndarray, heads: int) -> np.ndarray:
    from smashlib.export.gguf import rotary_row_order

    original = np.empty_like(array)
    original[rotary_row_order(array.shape[0], heads).numpy()] = array
    return original


def check_against_llama_cpp(path, smashed, tokenizer) -> None:
    """llama.cpp's logits for the file against smashlib's, where llama-cpp-python is installed (the
    benchmarks' engine, built from source: never installed by CI)."""
    try:
        import llama_cpp
    except ImportError:
        return
    ids = tokenizer("the quick brown fox jumps over the lazy dog and runs far away")["input_ids"][:12]
    engine = llama_cpp.Llama(model_path=str(path), logits_all=True, verbose=False, n_ctx=64)
    engine.eval(ids)
    theirs = torch.tensor(np.array(engine.scores[: len(ids)]))
    with torch.no_grad():
        ours = smashed(input_ids=torch.tensor([ids])).logits[0].float()
    assert ((theirs - ours).norm() / ours.norm()).item() < 0.03  # llama.cpp's int8 activations: ~0.01


@pytest.mark.parametrize("grid", ["q8_0", "q4_0", "q4_1"])
def test_gguf_blocks_dequantize_to_exactly_smashlibs_weights(tokenizer, grid, tmp_path):
    smashed = smash_on_grid(tokenizer, grid)
    path = smashed.save_pretrained(tmp_path / "model.gguf", format="gguf")
    _, tensors = read(path)
    config = smashed.model.config
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    checked = 0
    for index, layer in enumerate(smashed.model.model.layers):
        for hf, name in [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                         ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                         ("mlp.down_proj", "ffn_down")]:
            module = layer.get_submodule(hf)
            assert isinstance(module, PackedLinear)
            tensor = tensors[f"blk.{index}.{name}.weight"]
            assert tensor.tensor_type.name == grid.upper()
            values = dequantized(tensor)
            if name in heads:
                values = undo_rotary_order(values, heads[name])
            assert np.array_equal(values, module.dequantize().numpy()), f"blk.{index}.{name}"
            checked += 1
        norm = tensors[f"blk.{index}.attn_norm.weight"]
        assert np.array_equal(dequantized(norm), layer.input_layernorm.weight.detach().numpy())
    assert checked == 14
    # the tied head is stored once, as token_embd, in the same blocks
    assert "output.weight" not in tensors
    head = smashed.model.lm_head
    assert np.array_equal(dequantized(tensors["token_embd.weight"]), head.dequantize().numpy())


def test_gguf_metadata_is_llamas_and_the_tokenizer_is_complete(tokenizer, tmp_path):
    smashed = smash_on_grid(tokenizer, "q4_0")
    reader, _ = read(smashed.save_pretrained(tmp_path / "m.gguf", format="gguf"))
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    config = smashed.model.config
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == config.num_hidden_layers
    assert fields["llama.embedding_length"] == config.hidden_size
    assert fields["llama.feed_forward_length"] == config.intermediate_size
    assert fields["llama.attention.head_count"] == config.num_attention_heads
    assert fields["llama.attention.head_count_kv"] == config.num_key_value_heads
    assert fields["llama.rope.dimension_count"] == config.hidden_size // config.num_attention_heads
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # llama.cpp's name: it refuses to load "gpt2"
    vocab = tokenizer.get_vocab()
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == config.vocab_size
    assert all(tokens[index] == token for token, index in vocab.items())
    assert len(fields["tokenizer.ggml.merges"]) > 0
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id


def test_gptq_beats_round_to_nearest_on_the_q4_0_grid():
    torch.manual_seed(0)
    mixing = torch.randn(64, 64)
    inputs = torch.randn(2048, 64) @ mixing  # correlated inputs, where GPTQ's error feedback pays
    weight = torch.randn(48, 64) * 0.05
    hessian = 2 * inputs.t() @ inputs / inputs.shape[0]

    def output_error(quantized):
        return float(((inputs @ (weight - quantized.dequantize(32)).t()) ** 2).mean())

    gptq = output_error(gptq_quantize(weight, hessian, 4, 32, grid_kind="q4_0"))
    rtn = output_error(rtn_quantize(weight, 4, 32, grid_kind="q4_0"))
    assert gptq < 0.8 * rtn, (gptq, rtn)


def test_q4_0_grid_is_llama_cpps_choice_and_exact_in_fp16_and_bf16():
    weight = torch.tensor([[0.3, -0.9, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scale, zero = block_grid_parameters(weight, "q4_0")
    assert torch.equal(zero, torch.tensor([8.0, 8.0]))
    assert scale[0] == representable_scale(torch.tensor(0.9 / 8))  # d = max / -8 with max = -0.9
    assert scale[1] != 0  # an all-zero block still divides safely
    values = torch.logspace(-9, 1, 500) * torch.where(torch.rand(500) < 0.5, -1.0, 1.0)
    for bits in (8, 7):
        rounded = representable_scale(values, bits)
        assert torch.equal(rounded.half().float(), rounded) and torch.equal(rounded.bfloat16().float(), rounded)
    q41 = representable_scale(values.abs(), 7)
    for zero_point in range(16):
        assert torch.equal((q41 * zero_point).half().float(), q41 * zero_point)  # Q4_1's minimum, exact


def test_an_unquantized_llama_writes_f32_exactly(tokenizer, tmp_path):
    from smashlib.export.gguf import save_gguf

    model = build_tiny("llama")
    _, tensors = read(save_gguf(model, tmp_path / "f32.gguf", tokenizer=tokenizer))
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "F32"
    assert np.array_equal(dequantized(tensors["blk.0.ffn_down.weight"]), model.model.layers[0].mlp.down_proj.weight.detach().numpy())
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd


def test_the_default_bf16_grid_is_refused_with_the_fix(tokenizer, tmp_path):
    config = SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", "gptq_desc_act": False}, device="cpu")
    config.add_tokenizer(tokenizer)
    smashed = smash(build_tiny("llama"), config, verbose=False)
    with pytest.raises(UnsupportedExportError, match="gptq_grid='q8_0', 'q4_0' or 'q4_1'"):
        smashed.save_pretrained(tmp_path / "x.gguf", format="gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_other_architectures_and_algorithms_are_refused(tokenizer, tmp_path):
    from smashlib.export.gguf import save_gguf

    with pytest.raises(UnsupportedExportError, match="Llama, Mistral, Qwen2 and Qwen3 architectures"):
        save_gguf(build_tiny("gpt2"), tmp_path / "g.gguf", tokenizer=tokenizer)
    smashed = smash(build_tiny("llama"), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False)
    with pytest.raises(UnsupportedExportError, match="half"):
        smashed.save_pretrained(tmp_path / "h.gguf", format="gguf")
    with pytest.raises(UnknownNameError, match="gguf"):
        smashed.save_pretrained(tmp_path / "h.gguf", format="ggfu")


@pytest.mark.parametrize("target", ["both", "layers"])
def test_a_pruned_model_exports_its_smaller_shapes(tokenizer, target, tmp_path):
    """torch_structured leaves a Llama that config.json describes; with heads cut, head_dim is no longer
    hidden / heads, and llama.cpp refuses the file unless key_length and value_length say it."""
    smashed = smash_on_grid(tokenizer, "q8_0", gptq_method="rtn", pruner="torch_structured",
                            torch_structured_target=target, torch_structured_sparsity=0.5)
    config = smashed.model.config
    path = smashed.save_pretrained(tmp_path / "m.gguf", format="gguf")
    reader, tensors = read(path)
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert fields["llama.block_count"] == config.num_hidden_layers == len(smashed.model.model.layers)
    assert fields["llama.attention.head_count"] == config.num_attention_heads
    if target == "both":
        assert config.head_dim != config.hidden_size // config.num_attention_heads
        assert fields["llama.attention.key_length"] == fields["llama.attention.value_length"] == config.head_dim
    assert tensors["blk.0.attn_q.weight"].shape[1] == config.num_attention_heads * config.head_dim
    check_against_llama_cpp(path, smashed, tokenizer)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def architecture_model(name: str):
    """Tiny models of the other architectures the exporter writes: Llama 3.1's rope scaling (its
    frequencies scaled from the second on at this size), Mistral, Qwen2 (q/k/v biases), and Qwen3 with
    head_dim larger than hidden / heads, as Qwen3-0.6B has it (128 against 64)."""
    import transformers

    if name in ("mistral", "qwen2"):
        return build_tiny(name)
    torch.manual_seed(0)
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128}
    if name == "llama3_rope":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes, rope_parameters=LLAMA3_ROPE)).eval()
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**sizes, head_dim=32, tie_word_embeddings=True)).eval()


def llama3_rope_factors(head_dim: int, rope: dict) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py (LlamaModel.generate_extra_tensors), written out independently."""
    import math

    base, factor = rope["rope_theta"], rope["factor"]
    low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


@pytest.mark.parametrize("name,architecture", [("llama3_rope", "llama"), ("mistral", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3")])
def test_other_architectures_are_written_as_llama_cpps_converter_writes_them(name, architecture, tokenizer, tmp_path):
    config = SmashConfig({"quantizer": "gptq", "gptq_grid": "q8_0", "gptq_weight_bits": 8, "gptq_group_size": 32,
                          "gptq_method": "rtn"}, device="cpu")
    config.add_tokenizer(tokenizer)
    smashed = smash(architecture_model(name), config, verbose=False)
    path = smashed.save_pretrained(tmp_path / "m.gguf", format="gguf")
    reader, tensors = read(path)
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    model_config = smashed.model.config
    assert fields["general.architecture"] == architecture
    layer = smashed.model.model.layers[1].self_attn
    q_values = dequantized(tensors["blk.1.attn_q.weight"])
    if architecture == "llama":  # llama.cpp's rotary pairs adjacent rows; Qwen's pairs halves, as transformers does
        q_values = undo_rotary_order(q_values, model_config.num_attention_heads)
    assert np.array_equal(q_values, layer.q_proj.dequantize().numpy())
    if name == "llama3_rope":
        expected = llama3_rope_factors(model_config.hidden_size // model_config.num_attention_heads, LLAMA3_ROPE)
        assert np.allclose(dequantized(tensors["rope_freqs.weight"]), expected, rtol=1e-5) and (expected != 1).any()
    else:
        assert "rope_freqs.weight" not in tensors
    if name == "qwen2":
        for short, hf in [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")]:
            bias = getattr(layer, hf).bias.detach().numpy()
            assert np.array_equal(dequantized(tensors[f"blk.1.{short}.bias"]), bias)
        assert "blk.1.attn_output.bias" not in tensors
    if name == "qwen3":
        assert np.array_equal(dequantized(tensors["blk.1.attn_q_norm.weight"]), layer.q_norm.weight.detach().numpy())
        assert fields["qwen3.attention.key_length"] == model_config.head_dim == 32
    check_against_llama_cpp(path, smashed, tokenizer)


@pytest.mark.parametrize("change,match", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32}},
     "rope_type='yarn'"),
    ({"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 0}, "sliding-window"),
])
def test_what_llama_cpp_would_compute_differently_is_refused(change, match, tokenizer, tmp_path):
    import transformers

    from smashlib.export.gguf import save_gguf

    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128}
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**sizes, **change))
    with pytest.raises(UnsupportedExportError, match=match):
        save_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer)
    assert not (tmp_path / "m.gguf").exists()


def test_a_grid_needs_its_bits_and_block_size():
    with pytest.raises(SmashConfigError, match="gptq_weight_bits=8 and gptq_group_size=32"):
        smash(build_tiny("llama"), SmashConfig({"quantizer": "gptq", "gptq_grid": "q8_0", "gptq_method": "rtn"}, device="cpu"))


@pytest.mark.real_model
def test_smollm2_tokenizer_matches_llama_cpps_own_conversion(tmp_path):
    """The bundled SmolLM2 GGUF was written by llama.cpp's converter: our token list, types and merges
    for the same vocabulary must agree with it."""
    from transformers import AutoTokenizer

    from smashlib.bundled import GGUF_FILE, gguf_folder, smollm2_path
    from smashlib.export.gguf import vocabulary

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    reference = gguf.GGUFReader(str(gguf_folder() / GGUF_FILE))
    tokens, types = vocabulary(tokenizer, 49152)
    assert tokens == reference.fields["tokenizer.ggml.tokens"].contents()
    assert types == reference.fields["tokenizer.ggml.token_type"].contents()


def test_the_command_line_writes_a_gguf(tokenizer, tmp_path):
    from smashlib.cli import main

    source = tmp_path / "tiny"
    build_tiny("llama").save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "model.gguf"
    code = main(["smash", str(source), "--quantizer", "gptq", "--gptq-method", "rtn", "--gptq-grid", "q4_0",
                 "--format", "gguf", "--out", str(out), "--quiet"])
    assert code == 0
    _, tensors = read(out)
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == "Q4_0"


def test_a_saved_and_reloaded_model_exports_the_same_file(tokenizer, tmp_path):
    from smashlib import SmashedModel

    config = SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", "gptq_grid": "q4_1"}, device="cpu")
    config.add_tokenizer(tokenizer)
    smashed = smash(build_tiny("llama"), config, verbose=False)
    smashed.save_pretrained(tmp_path / "folder")
    loaded = SmashedModel.from_pretrained(tmp_path / "folder")
    first = smashed.save_pretrained(tmp_path / "a.gguf", format="gguf")
    second = loaded.save_pretrained(tmp_path / "b.gguf", format="gguf")
    assert first.read_bytes() == second.read_bytes()


def test_mixed_precision_exports_its_8_bit_layers_as_q8_0(tokenizer, tmp_path):
    """gptq_sensitive_layers_precision="int8" on a llama.cpp grid: the upgraded layers are Q8_0, as in Q4_K_M."""
    smashed = smash_on_grid(tokenizer, "q4_0", gptq_sensitive_layers_precision="int8")
    _, tensors = read(smashed.save_pretrained(tmp_path / "model.gguf", format="gguf"))
    types = {name: tensor.tensor_type.name for name, tensor in tensors.items() if name.startswith("blk.")
             and name.endswith(("attn_v.weight", "ffn_down.weight", "ffn_up.weight"))}
    assert types == {"blk.0.attn_v.weight": "Q4_0", "blk.0.ffn_down.weight": "Q4_0", "blk.0.ffn_up.weight": "Q4_0",
                     "blk.1.attn_v.weight": "Q8_0", "blk.1.ffn_down.weight": "Q8_0", "blk.1.ffn_up.weight": "Q4_0"}
    layer = smashed.model.model.layers[1].mlp.down_proj
    assert np.array_equal(dequantized(tensors["blk.1.ffn_down.weight"]), layer.dequantize().numpy())
