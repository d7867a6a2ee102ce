"""gptq: the solver beats round-to-nearest, packing is exact, a packed layer computes its own weight, the
algorithm calibrates tiny and real models, saves and loads exactly, and refuses what it cannot do."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch.nn import functional as F

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.data import pack_texts
from smashlib.errors import MissingComponentError, MissingPackageError, SmashConfigError, UnsupportedModelError
from smashlib.gptq.layerwise import Grid, quantize_model
from smashlib.gptq.solver import HessianAccumulator, gptq_quantize, rtn_quantize
from smashlib.layers.int8_vnni_kernel import unavailable_reason
from smashlib.layers.packed_int import PackedEmbedding, PackedLinear, pack_bits, packed_length, unpack_bits
from tests.tiny_models import build_tiny, tiny_inputs, tiny_tokenizer

FAST = {"gptq_calibration_samples": 16, "gptq_sequence_length": 128}
#: What 8-bit layers run here: smashlib's VNNI kernel where it builds, else PyTorch's weight-only kernel.
EIGHT_BIT_KERNEL = "int8_vnni_cpu" if unavailable_reason() is None else "int8pack_cpu"
#: What 2-4-bit layers run here: smashlib's kernel where it builds, else PyTorch's int4 kernel.
FOUR_BIT_KERNEL = "int4_vnni_cpu" if unavailable_reason() is None else "int4pack_cpu"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def calibration(tokenizer):
    from pydoc_data.topics import topics

    texts = [text for _, text in sorted(topics.items()) if len(text) > 500]
    return pack_texts(texts, tokenizer, seq_len=64, n_samples=32, batch_size=8)


def gptq_config(tokenizer, data, **values) -> SmashConfig:
    config = SmashConfig({"quantizer": "gptq", **FAST, **values}, device="cpu")
    if tokenizer is not None:
        config.add_tokenizer(tokenizer)
    if data is not None:
        config.add_data(data)
    return config


def state_bytes(model) -> int:
    """Bytes of a model's state dict, a tensor shared by two names (tied embeddings) counted once."""
    unique = {(t.data_ptr(), t.dtype, tuple(t.shape)): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def build(name: str) -> torch.nn.Module:
    """A tiny model: those of tests/tiny_models.py, plus OPT (a third decoder layout gptq knows)."""
    if name != "opt":
        return build_tiny(name)
    import transformers

    torch.manual_seed(0)
    config = transformers.OPTConfig(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
        max_position_embeddings=128, word_embed_proj_dim=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.OPTForCausalLM(config).eval()


def logits(model, name: str = "llama") -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_inputs("llama" if name == "opt" else name)).logits


# ====================================================================== packing
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("count", [1, 7, 8, 33, 576])
def test_packing_round_trip_is_exact(bits, count):
    values = torch.randint(0, 1 << bits, (5, count), dtype=torch.uint8)
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, packed_length(count, bits))
    assert torch.equal(unpack_bits(packed, bits, count), values)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packed_values_take_their_real_width(bits):
    assert packed_length(1024, bits) == 1024 * bits // 8


def test_packing_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_bits(torch.tensor([[16]]), 4)


# ====================================================================== the solver
def layer_inputs(model, module, batches) -> torch.Tensor:
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    handle.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("layer", ["self_attn.q_proj", "mlp.down_proj"])
@pytest.mark.parametrize("bits,group_size,act_order", [(4, 32, False), (3, -1, True), (2, 64, True)])
def test_gptq_reduces_the_layers_output_error_against_round_to_nearest(calibration, layer, bits, group_size, act_order):
    model = build_tiny("llama")
    module = model.model.layers[1].get_submodule(layer)
    inputs = layer_inputs(model, module, calibration)
    hessian = HessianAccumulator(inputs.shape[1])
    hessian.add(inputs)
    weight = module.weight.detach()

    def output_error(quantized) -> float:
        return ((inputs @ (weight - quantized.dequantize(group_size)).t()) ** 2).mean().item()

    gptq = output_error(gptq_quantize(weight, hessian.hessian, bits, group_size, 0.01, act_order))
    rtn = output_error(rtn_quantize(weight, bits, group_size))
    assert gptq < 0.8 * rtn, f"GPTQ {gptq:.3g} vs round-to-nearest {rtn:.3g}"


def test_lazy_batch_updates_equal_the_column_by_column_algorithm():
    weight = torch.randn(64, 256) * 0.02
    inputs = torch.randn(1024, 256) @ (torch.randn(256, 256) / 16)
    hessian = 2 * inputs.t() @ inputs / inputs.shape[0]
    lazy = gptq_quantize(weight, hessian, 4, -1, block_size=128)
    one_block = gptq_quantize(weight, hessian, 4, -1, block_size=256)
    assert torch.equal(lazy.q, one_block.q)


def test_act_order_stores_a_permutation_and_dequantizes_in_the_original_order():
    weight = torch.randn(32, 128) * 0.02
    # a diagonal Hessian: no error to spread between columns, so each weight rounds to its nearest level
    hessian = torch.diag(torch.linspace(0.1, 3.0, 128))
    quantized = gptq_quantize(weight, hessian, 8, 32, act_order=True)
    assert quantized.perm.tolist() == list(range(127, -1, -1))  # the most active inputs first
    half_step = quantized.scales.float().amax(dim=1, keepdim=True) / 2
    assert ((quantized.dequantize(32) - weight).abs() <= half_step * 1.01).all()


def test_inputs_never_seen_in_calibration_keep_their_weights():
    """A column whose input was zero on every calibration token (GELU or ReLU channels that never fired) is
    rounded to nearest. The reference code zeroed it, and on other inputs such channels do fire: Whisper
    tiny.en calibrated on short clips lost 325 channels of its last encoder MLP (word error rate 1.4% -> 14%)."""
    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    x = torch.randn(256, 64)
    x[:, :5] = 0  # never active in calibration
    accumulator = HessianAccumulator(64)
    accumulator.add(x)
    quantized = gptq_quantize(weight.clone(), accumulator.hessian, 8, -1, 0.01, True).dequantize(-1)
    rounded = rtn_quantize(weight[:, :5].clone(), 8, -1).dequantize(-1)
    assert torch.allclose(quantized[:, :5], weight[:, :5], atol=0.05)
    assert (quantized[:, :5] - weight[:, :5]).abs().max() <= 2 * (rounded - weight[:, :5]).abs().max() + 1e-6


def test_round_to_nearest_never_leaves_the_grid():
    quantized = rtn_quantize(torch.randn(16, 64), 3, 32)
    assert int(quantized.q.max()) <= 7 and int(quantized.zeros.max()) <= 7


# ====================================================================== the packed layer
@pytest.mark.parametrize(
    "bits,group_size,act_order,out_features,kernel",
    [
        (4, 128, False, 64, FOUR_BIT_KERNEL),
        (4, 64, True, 48, FOUR_BIT_KERNEL),
        (3, 32, False, 32, FOUR_BIT_KERNEL),
        (2, -1, True, 32, FOUR_BIT_KERNEL),
        (8, -1, True, 32, EIGHT_BIT_KERNEL),
        (8, 64, False, 32, EIGHT_BIT_KERNEL),
        # 100 rows: PyTorch's int4 kernel needs a multiple of 16, smashlib's does not
        (4, 32, False, 100, "int4_vnni_cpu" if unavailable_reason() is None else "dequantized"),
        (4, 64, True, 48, ("weight_only", "int4pack_cpu")),
        (3, 32, False, 32, ("int8_only", "int4pack_cpu")),
    ],
)
def test_packed_linear_computes_its_dequantized_weight(bits, group_size, act_order, out_features, kernel):
    """Each kernel form computes the layer's own dequantized product; ``decode_kernel`` other than "auto" keeps
    2-4-bit layers on PyTorch's int4 kernel (what folders saved before smashlib's 4-bit kernel computed)."""
    decode_kernel, kernel = kernel if isinstance(kernel, tuple) else ("auto", kernel)
    in_features = 256
    weight = torch.randn(out_features, in_features) * 0.05
    bias = torch.randn(out_features)
    inputs = torch.randn(512, in_features) * torch.linspace(0.2, 2.0, in_features)
    quantized = gptq_quantize(weight, 2 * inputs.t() @ inputs / 512, bits, group_size, act_order=act_order)
    layer = PackedLinear.from_integers(quantized.q, quantized.scales, quantized.zeros, bits, group_size, quantized.perm, bias)
    layer.decode_kernel = decode_kernel
    layer.prepare_kernel()
    assert layer.kernel_name == kernel
    assert torch.equal(layer.dequantize(), quantized.dequantize(group_size))
    x = torch.randn(3, 5, in_features)
    expected = F.linear(x, layer.dequantize(), bias)
    # the CPU kernels take bf16 activations (8 bits of mantissa); 8-bit groups are re-rounded per row
    tolerance = 1e-5 if kernel == "dequantized" else 2e-2
    assert (layer(x) - expected).abs().max() <= tolerance * expected.abs().max()


@pytest.mark.parametrize("tokens", [1, 8, 9, 128])  # GEMM_ROWS is 8
@pytest.mark.parametrize("group_size,act_order", [(32, True), (128, False), (-1, False)])
def test_4_bit_layers_compute_the_same_product_for_decode_and_prefill_shapes(tokens, group_size, act_order):
    """Up to GEMM_ROWS rows smashlib's 4-bit kernel (int16 activation blocks: a relative 1e-4 here), above them a
    GEMM on the weight its dequantize op rebuilds, exactly the stored weight."""
    if unavailable_reason() is not None:
        pytest.skip(f"smashlib's kernel {unavailable_reason()}")
    weight = torch.randn(80, 256) * 0.05
    inputs = torch.randn(512, 256) * torch.linspace(0.2, 2.0, 256)
    quantized = gptq_quantize(weight, 2 * inputs.t() @ inputs / 512, 4, group_size, act_order=act_order)
    layer = PackedLinear.from_integers(quantized.q, quantized.scales, quantized.zeros, 4, group_size, quantized.perm,
                                       torch.randn(80))
    assert layer.kernel_name == "int4_vnni_cpu"
    x = torch.randn(1, tokens, 256)
    expected = F.linear(x, layer.dequantize(), layer.bias)
    assert (layer(x) - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("tokens", [1, 8, 9, 128])  # GEMM_ROWS is 8
def test_int8_layers_compute_the_same_product_for_decode_and_prefill_shapes(tokens):
    """8-bit layers run the matrix-vector kernel up to GEMM_ROWS rows and a bf16 GEMM on the converted int8
    matrix above: both compute the layer's dequantized product (to bf16 rounding), whichever runs."""
    weight = torch.randn(96, 256) * 0.05
    quantized = gptq_quantize(weight, torch.eye(256), 8, -1, act_order=False)
    layer = PackedLinear.from_integers(quantized.q, quantized.scales, quantized.zeros, 8, -1, None, torch.randn(96))
    x = torch.randn(1, tokens, 256)
    expected = F.linear(x, layer.dequantize(), layer.bias)
    assert (layer(x) - expected).abs().max() <= 2e-2 * expected.abs().max()


def test_bfloat16_compute_dtype_casts_the_rest_and_reloads_exactly(tokenizer, tmp_path):
    """gptq_compute_dtype='bfloat16': everything that is not quantized runs in bf16 (the kernels' own
    activation dtype), callers' float inputs are cast, and the saved folder loads back to the same outputs."""
    smashed = smash(build_tiny("llama"), gptq_config(tokenizer, "PydocTopics", gptq_weight_bits=8, gptq_group_size=-1,
                                                      gptq_compute_dtype="bfloat16"), verbose=False)
    floats = {t.dtype for t in smashed.model.state_dict().values() if t.is_floating_point()}
    assert floats == {torch.bfloat16}
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        before = smashed(**inputs).logits
        embeds = smashed.model.get_input_embeddings()(inputs["input_ids"]).float()  # a float32 caller
        assert smashed(inputs_embeds=embeds).logits.dtype == torch.bfloat16
    assert before.dtype == torch.bfloat16
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, before)


def test_packed_linear_state_is_plain_tensors_and_reloads_exactly():
    weight = torch.randn(32, 64)
    quantized = gptq_quantize(weight, torch.eye(64), 4, 32, act_order=True)
    layer = PackedLinear.from_integers(quantized.q, quantized.scales, quantized.zeros, 4, 32, quantized.perm, torch.ones(32))
    state = layer.state_dict()
    assert set(state) == {"qweight", "scales", "qzeros", "perm", "bias"}
    assert all(type(t) is torch.Tensor for t in state.values())
    assert state["qweight"].dtype == torch.uint8 and state["qweight"].shape == (32, 32)
    empty = PackedLinear(64, 32, 4, 32, bias=True, act_order=True, device="meta")
    empty.load_state_dict(state, assign=True)
    x = torch.randn(4, 64)
    assert torch.equal(empty(x), layer(x))


def test_tied_embedding_reads_the_heads_rows():
    weight = torch.randn(48, 64)
    quantized = rtn_quantize(weight, 4, 32)
    head = PackedLinear.from_integers(quantized.q, quantized.scales, quantized.zeros, 4, 32)
    embedding = PackedEmbedding(head)
    ids = torch.tensor([[0, 5, 47], [3, 3, 1]])
    assert torch.equal(embedding(ids), head.dequantize()[ids])
    assert embedding.state_dict() == {}  # the table is saved once, with the head


# ====================================================================== the algorithm
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_smash_quantizes_every_block_layer_and_the_head(name, tokenizer):
    model = build_tiny(name)
    before = logits(model, name)
    fp32_bytes = state_bytes(model)
    smashed = smash(model, gptq_config(tokenizer, "PydocTopics"), verbose=False)
    packed = [m for m in smashed.model.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == (15 if name == "llama" else 9)  # 7 (llama) / 4 (gpt2) per block, 2 blocks, head
    assert isinstance(smashed.model.get_input_embeddings(), PackedEmbedding)  # tied: one packed table
    after = logits(smashed, name)
    assert (after - before).abs().mean() < 0.25 * before.abs().mean()
    assert state_bytes(smashed.model) < 0.45 * fp32_bytes


def test_gptq_is_closer_to_the_model_than_round_to_nearest(calibration):
    reference = build_tiny("llama")
    inputs = calibration[0]
    with torch.no_grad():
        expected = reference(**inputs).logits
    errors = {}
    for method in ("gptq", "rtn"):
        from smashlib.gptq.layerwise import SolverOptions

        model = quantize_model(build_tiny("llama"), calibration[1:], Grid(3, 32, False), None, SolverOptions(method), verbose=False)
        with torch.no_grad():
            errors[method] = (model(**inputs).logits - expected).pow(2).mean().item()
    assert errors["gptq"] < 0.8 * errors["rtn"], errors


def test_rtn_method_needs_no_data_and_uses_the_same_storage(tokenizer):
    """gptq_method='rtn' is the no-calibration baseline: same grid and packed layers, no components."""
    config = SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", "gptq_group_size": 32}, device="cpu")
    assert config.missing_components() == []
    smashed = smash(build_tiny("llama"), config, verbose=False)
    layer = smashed.model.model.layers[0].mlp.up_proj
    assert isinstance(layer, PackedLinear) and layer.bits == 4 and layer.group_size == 32
    assert layer.perm is None  # no act-order without a solver: no permutation stored or gathered
    weight = build_tiny("llama").model.layers[0].mlp.up_proj.weight.detach()
    assert torch.equal(layer.dequantize(), rtn_quantize(weight.float(), 4, 32).dequantize(32))


def test_rtn_method_refuses_the_gptqmodel_backend():
    config = SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", "gptq_backend": "gptqmodel"}, device="cpu")
    with pytest.raises(SmashConfigError, match="gptq_backend='torch'"):
        smash(build_tiny("llama"), config, verbose=False)


def test_packed_layers_compile_with_inductor():
    """gptq + torch_compile (the benchmark's fastest recipes): the int4 kernel and the bf16 casts around
    it trace into Inductor's graph without a break, and the compiled model computes what eager does."""
    values = {"quantizer": "gptq", "gptq_method": "rtn"}  # same layers and kernels as calibrated GPTQ
    expected = logits(smash(build_tiny("llama"), SmashConfig(values, device="cpu"), verbose=False))
    torch._dynamo.reset()
    try:
        compiled = smash(build_tiny("llama"), SmashConfig({**values, "compiler": "torch_compile"}, device="cpu"), verbose=False)
        assert torch.allclose(logits(compiled), expected, rtol=1e-2, atol=1e-2)
        assert compiled.generate(**tiny_inputs("llama"), max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == 8 + 3
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize(
    "name,values",
    [
        ("llama", {}),
        ("llama", {"gptq_weight_bits": 3, "gptq_group_size": 32, "gptq_desc_act": True, "gptq_output_head_precision": "weight_bits"}),
        ("llama", {"gptq_weight_bits": 8, "gptq_group_size": -1, "gptq_target_modules": "all_but_output_head"}),
        ("gpt2", {"gptq_desc_act": False}),
        ("opt", {}),
    ],
    ids=["default", "3bit-actorder-head", "8bit-keep-head", "gpt2", "opt"],
)
def test_save_and_load_give_the_same_outputs(name, values, tokenizer, tmp_path):
    smashed = smash(build(name), gptq_config(tokenizer, "PydocTopics", **values), verbose=False)
    before = logits(smashed, name)
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(logits(loaded, name), before)
    kernels = {m.kernel_name for m in loaded.model.modules() if isinstance(m, PackedLinear)}
    assert kernels <= {FOUR_BIT_KERNEL, EIGHT_BIT_KERNEL, "dequantized"} and kernels


def test_missing_tokenizer_is_named():
    with pytest.raises(MissingComponentError, match="add_tokenizer"):
        smash(build_tiny("llama"), gptq_config(None, "PydocTopics"), verbose=False)


def test_missing_data_is_named(tokenizer):
    with pytest.raises(MissingComponentError, match="add_data"):
        smash(build_tiny("llama"), gptq_config(tokenizer, None), verbose=False)


def test_unsupported_model_names_the_supported_layouts(tokenizer):
    with pytest.raises(UnsupportedModelError, match="T5.*BART.*Llama-like.*GPT-2.*BERT"):
        smash(build_tiny("mamba"), gptq_config(tokenizer, "PydocTopics"), verbose=False)


def test_a_model_reading_neither_text_nor_whisper_speech_is_refused_with_what_to_use_instead(tokenizer):
    """Speech2Text's blocks sit where BART's do, but it reads filter-bank features: calibrated on text it would
    fail in the first forward pass."""
    import transformers

    config = transformers.Speech2TextConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=256, input_feat_per_channel=16,
    )
    with pytest.raises(UnsupportedModelError, match="reads speech.*hqq"):
        smash(transformers.Speech2TextForConditionalGeneration(config), gptq_config(tokenizer, "PydocTopics"), verbose=False)


# ====================================================================== Whisper, calibrated on speech
def tiny_whisper_speech(tokenizer, rows: int = 6):
    """A processor whose 1-second windows give the tiny Whisper's 64 feature frames, and speech rows (noise,
    with real sentences as transcripts)."""
    from pydoc_data.topics import topics

    import datasets
    import numpy as np
    import transformers

    processor = transformers.WhisperProcessor(
        feature_extractor=transformers.WhisperFeatureExtractor(feature_size=16, chunk_length=1, hop_length=250),
        tokenizer=tokenizer,
    )
    rng = np.random.default_rng(0)
    texts = [text[:120] for text in list(topics.values())[:rows]]
    speech = datasets.Dataset.from_dict({"audio": [0.1 * rng.standard_normal(16_000).astype("float32") for _ in texts],
                                         "sentence": texts})
    return processor, (speech, speech, speech)


def whisper_config(tokenizer, processor, data, **values) -> SmashConfig:
    config = SmashConfig({"quantizer": "gptq", **values}, device="cpu")
    config.add_tokenizer(tokenizer)
    if processor is not None:
        config.add_processor(processor)
    if data is not None:
        if isinstance(data, str):
            config.add_data(data)
        else:
            config.add_data(data, collate_fn="audio_processing_collate")
    return config


def test_whisper_is_calibrated_on_speech_and_reloads_exactly(tokenizer, tmp_path):
    """The encoder's and decoder's layers (2 + 2 blocks: 32) and the head are packed, the decoder's embedding
    reads the head's table (they are tied), the convolutions stay float; the decoder was calibrated on the
    transcripts behind the start token, on the quantized encoder's outputs."""
    processor, speech = tiny_whisper_speech(tokenizer)
    model = build_tiny("whisper")
    inputs = tiny_inputs("whisper")
    with torch.no_grad():
        reference = model(**inputs).logits
    smashed = smash(model, whisper_config(tokenizer, processor, speech, gptq_weight_bits=8, gptq_group_size=-1), verbose=False)
    layers = [n for n, m in smashed.model.named_modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 33 and "proj_out" in layers
    assert isinstance(smashed.model.model.decoder.embed_tokens, PackedEmbedding)
    loaded = close_to_the_model_and_reloaded_exactly(smashed, inputs, reference, tmp_path)
    features = inputs["input_features"]
    assert torch.equal(loaded.generate(input_features=features, max_new_tokens=4), smashed.generate(input_features=features, max_new_tokens=4))


def test_whisper_calibration_batches_are_features_and_transcripts_behind_the_prefix(tokenizer):
    from types import SimpleNamespace

    from smashlib.data import to_data_module
    from smashlib.gptq.speech_calibration import speech_calibration_batches

    processor, speech = tiny_whisper_speech(tokenizer, rows=3)
    model = build_tiny("whisper")
    components = SimpleNamespace(processor=processor, tokenizer=tokenizer,
                                 data=to_data_module(speech, collate_fn="audio_processing_collate"))
    (batch,) = speech_calibration_batches(model, components, 3, 4)
    assert batch["input_features"].shape == (3, 16, 64)
    first = batch["decoder_input_ids"][0, batch["decoder_attention_mask"][0].bool()].tolist()
    text = speech[0]["sentence"][0]
    assert first == [model.config.decoder_start_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize("missing", ["processor", "speech"])
def test_whisper_without_its_processor_or_speech_is_refused_before_touching_it(missing, tokenizer):
    from smashlib.data.errors import DataError

    processor, speech = tiny_whisper_speech(tokenizer)
    model = build_tiny("whisper")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    if missing == "processor":
        config, error, match = whisper_config(tokenizer, None, speech), MissingComponentError, "add_processor"
    else:
        config, error, match = whisper_config(tokenizer, processor, "PydocTopics"), DataError, "not speech"
    with pytest.raises(error, match=match):
        smash(model, config, verbose=False)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_the_gptqmodel_backend_refuses_encoder_decoders_before_touching_them(tokenizer, monkeypatch):
    monkeypatch.setattr("smashlib.gptq.gptqmodel_backend.check_available", lambda settings: None)  # as if installed
    model = build_tiny("t5")
    with pytest.raises(UnsupportedModelError, match="gptq_backend='torch'"):
        smash(model, gptq_config(tokenizer, "PydocTopics", gptq_backend="gptqmodel"), verbose=False)
    assert type(model.encoder.block[0].layer[0].SelfAttention.q) is torch.nn.Linear


# ====================================================================== what each block is given
def replayed_and_real_outputs(model, batches, stack: str, seq2seq: bool = False):
    """The stack's last block's outputs when its blocks are replayed, float, on what calibration captured,
    and the same outputs in the model's own forward pass."""
    from smashlib.data.calibration import with_decoder_inputs
    from smashlib.gptq.layerwise import capture_block_inputs, run_block

    blocks = model.get_submodule(stack)
    calls = capture_block_inputs(model, blocks, batches, seq2seq)
    replayed = []
    for batch_index in range(len(batches)):
        hidden = calls[0][batch_index].hidden
        for block, per_batch in zip(blocks, calls):
            hidden = run_block(block, per_batch[batch_index], hidden)
        replayed.append(hidden)
    real = []
    handle = blocks[-1].register_forward_hook(lambda module, args, out: real.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            for batch in batches:
                model(**(with_decoder_inputs(model, batch) if seq2seq else batch), use_cache=False)
    finally:
        handle.remove()
    return replayed, real


@pytest.mark.parametrize("name,stack,seq2seq", [
    ("gemma3_mixed", "model.layers", False),  # a sliding-window block, then a full-attention one
    ("gpt_oss", "model.layers", False),
    ("t5", "encoder.block", True),  # later blocks get the position bias the first one computes
    ("t5", "decoder.block", True),
    ("bart", "model.decoder.layers", True),
])
def test_each_block_is_calibrated_on_what_the_model_gives_it(name, stack, seq2seq, calibration):
    """Replaying the blocks on the captured inputs reproduces the model. Calibration once gave every block
    the first block's masks and rotary embeddings: Gemma 3's and GPT-OSS's full-attention blocks were
    calibrated with a sliding window (16 tokens here, of 64) and Gemma 3's with the local rotary base."""
    if name == "gemma3_mixed":
        import transformers

        torch.manual_seed(0)
        config = transformers.Gemma3TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=128, head_dim=16, sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
        )
        model = transformers.Gemma3ForCausalLM(config).eval()
    else:
        model = build_tiny(name)
    with torch.no_grad():
        replayed, real = replayed_and_real_outputs(model, calibration[:2], stack, seq2seq)
    for mine, theirs in zip(replayed, real, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5), (mine - theirs).abs().max()


@pytest.mark.parametrize("name,runs", [("llama", 1), ("t5", 1 + 3)])
def test_capture_runs_blocks_returning_tensors_only_on_the_first_row(name, runs, calibration):
    """Transformers 5's decoder layers return a tensor: the model can pass the next block nothing else they
    computed, so capturing every block's arguments costs one row's forward pass; T5's blocks return tuples
    (the position bias) and run in the probe and in each of the 3 batches."""
    from smashlib.gptq.layerwise import capture_block_inputs

    model = build_tiny(name)
    blocks = model.model.layers if name == "llama" else model.encoder.block
    counts = [0] * len(blocks)
    inner = [block.mlp if name == "llama" else block.layer[-1] for block in blocks]  # runs only if the block does
    hooks = [module.register_forward_hook(lambda *a, i=i: counts.__setitem__(i, counts[i] + 1)) for i, module in enumerate(inner)]
    with torch.no_grad():
        calls = capture_block_inputs(model, blocks, calibration[:3], seq2seq=name == "t5")
    for hook in hooks:
        hook.remove()
    assert [len(per_block) for per_block in calls] == [3] * len(blocks)
    assert counts[:-1] == [runs] * (len(blocks) - 1) and counts[-1] == 0  # the last block is never run


def close_to_the_model_and_reloaded_exactly(smashed, inputs, reference, tmp_path):
    """8-bit logits within 3% of the model's; the saved folder loads back to the same logits. Returns it loaded."""
    with torch.no_grad():
        output = smashed(**inputs).logits
    assert ((output - reference).norm() / reference.norm()) < 0.03
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, output)
    return loaded


@pytest.mark.parametrize("name,packed", [("t5", 28), ("bart", 32), ("bert", 12)])
def test_encoder_decoders_and_encoders_quantize_every_block_layer_and_reload_exactly(name, packed, tokenizer, tmp_path):
    """T5 (``wo`` kept in float, as transformers keeps it), BART's 2 + 2 blocks, BERT's encoder. Their heads
    stay float: they share one table with the embeddings of both stacks."""
    model = build_tiny(name)
    inputs = tiny_inputs(name)
    with torch.no_grad():
        reference = model(**inputs).logits
    smashed = smash(model, gptq_config(tokenizer, "PydocTopics", gptq_weight_bits=8, gptq_group_size=-1), verbose=False)
    layers = [n for n, m in smashed.model.named_modules() if isinstance(m, PackedLinear)]
    assert len(layers) == packed and not any(n.endswith((".wo", "lm_head", "classifier")) for n in layers), layers
    loaded = close_to_the_model_and_reloaded_exactly(smashed, inputs, reference, tmp_path)
    if name != "bert":
        generated = smashed.generate(input_ids=inputs["input_ids"], max_new_tokens=4, do_sample=False)
        assert torch.equal(loaded.generate(input_ids=inputs["input_ids"], max_new_tokens=4, do_sample=False), generated)


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is not None, reason="GPTQModel is installed here")
def test_gptqmodel_backend_names_the_missing_package(tokenizer):
    config = gptq_config(tokenizer, "PydocTopics", gptq_backend="gptqmodel")
    model = build_tiny("llama")
    with pytest.raises(MissingPackageError, match="gptqmodel"):
        smash(model, config, verbose=False)
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear  # refused before touching the model


# ====================================================================== the real model
@pytest.mark.real_model
def test_smollm2_perplexity_stays_close_and_weights_shrink(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smashlib.data import calibration_batches

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    config = gptq_config(tokenizer, "PydocTopics")
    test = calibration_batches(config.components, 2, 256, batch_size=2, split="test")

    def perplexity(m) -> float:
        with torch.no_grad():
            batch = test[0]
            return math.exp(m(**batch, labels=batch["input_ids"]).loss.item())

    fp32 = perplexity(model)
    bf16_bytes = state_bytes(model) // 2
    smashed = smash(model, config, verbose=False)
    quantized = perplexity(smashed)
    assert state_bytes(smashed.model) <= 0.30 * bf16_bytes
    assert quantized < 1.25 * fp32, f"fp32 {fp32:.2f}, gptq 4-bit {quantized:.2f}"


# ====================================================================== GPTQ checkpoints (gptqmodel backend)
def pack_int32(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The GPTQ checkpoint packing, written independently of smashlib: 32 // bits values per int32 along
    ``dim``, lowest bits first (as auto-gptq's QuantLinear.pack does)."""
    per_word = 32 // bits
    values = values.to(torch.int64) & ((1 << bits) - 1)
    if dim == 1:
        return pack_int32(values.t(), bits, 0).t().contiguous()
    words = torch.zeros(values.shape[0] // per_word, values.shape[1], dtype=torch.int64)
    for position in range(per_word):
        words |= values[position::per_word] << (bits * position)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


@pytest.mark.parametrize("bits,act_order", [(4, False), (4, True), (2, True), (8, False)])
def test_gptq_checkpoint_layers_become_packed_layers(bits, act_order):
    from smashlib.gptq.gptqmodel_backend import packed_from_checkpoint

    out_features, in_features, group_size = 64, 128, 32
    groups = in_features // group_size
    q = torch.randint(0, 1 << bits, (out_features, in_features))
    zeros = torch.randint(0, 1 << bits, (out_features, groups))
    zeros[0, 0] = 0  # the v1 format stores zero - 1: a zero of 0 wraps around
    scales = (torch.rand(out_features, groups) + 0.5).to(torch.float16)
    g_idx = torch.randperm(in_features) // group_size if act_order else torch.arange(in_features) // group_size
    weight = scales.float()[:, g_idx] * (q - zeros[:, g_idx]).float()
    checkpoint = {
        "layer.qweight": pack_int32(q.t(), bits, dim=0),
        "layer.qzeros": pack_int32((zeros - 1).t(), bits, dim=1),
        "layer.scales": scales.t().contiguous(),
        "layer.g_idx": g_idx.to(torch.int32),
    }
    layer = packed_from_checkpoint(checkpoint, "layer", Grid(bits, group_size, act_order))
    # bf16 scales (the kernels' type) in place of fp16: a relative change below 2**-8
    assert torch.allclose(layer.dequantize(), weight, rtol=2**-8, atol=0)


# ====================================================================== mixed precision
def test_the_sensitive_blocks_follow_llama_cpps_rule():
    from smashlib.gptq.sensitive_layers import more_bits

    assert [i for i in range(30) if more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert [i for i in range(32) if more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(2) if more_bits(i, 2)] == [1]  # the tiny models' second block


@pytest.mark.parametrize("name,sensitive", [
    ("llama", {"model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"}),
    ("gpt2", {"transformer.h.1.mlp.c_proj"}),
    ("opt", {"model.decoder.layers.1.self_attn.v_proj", "model.decoder.layers.1.fc2"}),
    ("gpt_neox", {"gpt_neox.layers.1.mlp.dense_4h_to_h"}),
    # MoE: every expert's down projection (llama.cpp's ffn_down_exps) and the shared expert's
    ("qwen2_moe", {"model.layers.1.self_attn.v_proj", "model.layers.1.mlp.shared_expert.down_proj",
                   *(f"model.layers.1.mlp.experts.down_proj.{expert}" for expert in range(4))}),
    # encoder-decoders: the second block of each stack (T5's wo is kept in float, so only its values)
    ("t5", {"encoder.block.1.layer.0.SelfAttention.v", "decoder.block.1.layer.0.SelfAttention.v"}),
    ("bart", {f"model.{stack}.layers.1.{layer}" for stack in ("encoder", "decoder") for layer in ("self_attn.v_proj", "fc2")}),
    ("bert", {"bert.encoder.layer.1.attention.self.value", "bert.encoder.layer.1.output.dense"}),
])
def test_sensitive_layers_at_8_bits_in_every_family_save_and_load_exactly(name, sensitive, tokenizer, tmp_path):
    values = {"gptq_sensitive_layers_precision": "int8", "gptq_desc_act": name != "gpt2"}
    smashed = smash(build(name), gptq_config(tokenizer, "PydocTopics", **values), verbose=False)
    packed = {n: m for n, m in smashed.model.named_modules() if isinstance(m, PackedLinear)}
    eight = {n for n, m in packed.items() if m.bits == 8}
    assert eight == sensitive, eight
    assert all(packed[n].group_size == -1 and packed[n].kernel_name == EIGHT_BIT_KERNEL for n in eight)
    assert all(m.bits == 4 and m.group_size == 32 for n, m in packed.items() if n not in eight)
    before = logits(smashed, name)
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(logits(loaded, name), before)
    assert {n for n, m in loaded.model.named_modules() if isinstance(m, PackedLinear) and m.bits == 8} == sensitive


def test_mixed_precision_costs_bytes_only_where_it_says(tokenizer):
    plain = smash(build_tiny("llama"), gptq_config(tokenizer, "PydocTopics"), verbose=False)
    mixed = smash(build_tiny("llama"), gptq_config(tokenizer, "PydocTopics", gptq_sensitive_layers_precision="int8"),
                  verbose=False)
    layer = "model.layers.0.mlp.down_proj"  # block 0 of 2 is not a sensitive block
    assert torch.equal(plain.model.get_submodule(layer).dequantize(), mixed.model.get_submodule(layer).dequantize())
    assert state_bytes(plain.model) < state_bytes(mixed.model) < state_bytes(build_tiny("llama"))


def test_mixed_precision_refuses_the_gptqmodel_backend(tokenizer):
    config = gptq_config(tokenizer, "PydocTopics", gptq_sensitive_layers_precision="int8", gptq_backend="gptqmodel")
    with pytest.raises(SmashConfigError, match="mixed precision.*gptq_backend='torch'"):
        smash(build_tiny("llama"), config, verbose=False)
