"""Every weight quantizer that runs on CPU, on a tiny model of every family it claims, within a bound on
the relative logit error ||smashed - fp32|| / ||fp32||.

Random tiny models make no claim about real quality; what these bounds catch is a family whose layers are
handled wrongly: Gemma 3's tied output head once lost the embedding's sqrt(hidden) scale when quantized
(gptq 8-bit: 0.20 instead of 0.02). Bounds are about 2x the errors measured on these models (8-bit:
<= 0.03, 4-bit: <= 0.26, bf16: 0.01).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from smashlib import SmashConfig, registry, smash
from tests.tiny_models import build_tiny, tiny_inputs

DECODERS = ["llama", "gemma3", "gemma2", "qwen2", "qwen3", "mistral", "phi3", "phi", "gpt2", "opt", "gpt_neox", "falcon", "bloom",
            "mixtral", "qwen2_moe", "gpt_oss", "llava", "qwen2_vl", "gemma3_vlm"]
FAMILIES = [*DECODERS, "bert", "t5", "bart", "mamba"]
#: quantizer label -> (SmashConfig values, bound, families it claims). "all_linear" where the algorithm
#: allows it, so tied heads (Llama, Gemma 3, Qwen) are quantized and the tie is exercised.
QUANTIZERS = {
    "torch_dynamic": ({"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear"}, 0.06, FAMILIES),
    "torchao": ({"quantizer": "torchao", "torchao_target_modules": "all_linear"}, 0.05,
                [f for f in FAMILIES if f != "gpt2"]),  # no Conv1D support: refused with a pointer
    "quanto": ({"quantizer": "quanto", "quanto_target_modules": "all_linear"}, 0.05, [f for f in FAMILIES if f != "gpt2"]),
    "hqq": ({"quantizer": "hqq"}, 0.5, FAMILIES),
    "bnb_4bit": ({"quantizer": "bnb_4bit"}, 0.5, FAMILIES),
    "llm_int8": ({"quantizer": "llm_int8", "llm_int8_target_modules": "all_linear"}, 0.05, FAMILIES),
    "gptq": ({"quantizer": "gptq", "gptq_method": "rtn", "gptq_weight_bits": 8, "gptq_group_size": -1}, 0.05,
             [*DECODERS, "bert", "t5", "bart"]),
    "half": ({"quantizer": "half", "half_dtype": "bfloat16"}, 0.02, FAMILIES),
}
CASES = [(quantizer, family) for quantizer, (_, _, families) in QUANTIZERS.items() for family in families]


@pytest.mark.parametrize(("quantizer", "family"), CASES, ids=[f"{q}-{f}" for q, f in CASES])
def test_relative_logit_error_is_bounded(quantizer, family):
    values, bound, _ = QUANTIZERS[quantizer]
    missing = registry.get_algorithm(values["quantizer"]).missing_packages()
    if missing:
        pytest.skip(f"{values['quantizer']} needs {missing}")
    model, inputs = build_tiny(family), tiny_inputs(family)
    with torch.no_grad():
        reference = model(**inputs).logits.float()
    smashed = smash(model, SmashConfig(values, device="cpu"), verbose=False)
    with torch.no_grad():
        logits = smashed(**inputs).logits.float()
    error = ((logits - reference).norm() / reference.norm()).item()
    assert error < bound, f"{quantizer} on {family}: relative logit error {error:.4f} >= {bound}"


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
@pytest.mark.parametrize("tokens", [1, 5, 16])  # the decode kernels, and the longer-call ones
def test_quantized_layers_take_strided_inputs(quantizer, tokens):
    """Models pass transposed or sliced activations (Mamba's mixer): hqq's int4 kernel once refused them."""
    values = QUANTIZERS[quantizer][0]
    missing = registry.get_algorithm(values["quantizer"]).missing_packages()
    if missing:
        pytest.skip(f"{values['quantizer']} needs {missing}")
    smashed = smash(build_tiny("llama"), SmashConfig(values, device="cpu"), verbose=False)
    layer = smashed.model.model.layers[0].mlp.up_proj
    dtype = smashed.model.model.norm.weight.dtype
    strided = torch.randn(64, 2 * tokens).to(dtype)[:, ::2].t().unsqueeze(0)
    assert not strided.is_contiguous()
    with torch.no_grad():
        assert torch.equal(layer(strided), layer(strided.contiguous()))


def test_gemma3_tied_head_keeps_the_embedding_scale():
    """The quantized head's tied embedding multiplies by sqrt(hidden), as Gemma3TextScaledWordEmbedding does."""
    smashed = smash(build_tiny("gemma3"), SmashConfig(QUANTIZERS["gptq"][0], device="cpu"), verbose=False)
    embedding = smashed.model.get_input_embeddings()
    assert type(embedding).__name__ == "PackedEmbedding" and embedding.embed_scale == pytest.approx(8.0)


@pytest.fixture(scope="module")
def tokenizer():
    from tests.tiny_models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.mark.parametrize("family", DECODERS)
def test_calibrated_gptq_packs_every_block_layer_and_reloads_exactly(family, tokenizer, tmp_path):
    """GPTQ on data runs each family's blocks on the captured inputs of the first (masks, rotary, ALiBi, ...),
    packs every linear layer of every block, and a saved model loads back into the same layers and logits."""
    from smashlib.gptq.layerwise import block_layer_names, find_layout
    from smashlib.layers.expert_linears import split_experts
    from smashlib.layers.packed_int import PackedLinear

    model, inputs = build_tiny(family), tiny_inputs(family)
    split_experts(model)  # what smash() does first on a MoE model: its experts are block layers too
    block_layers = {name for names in block_layer_names(model, find_layout(model)) for name in names}
    config = SmashConfig({
        "quantizer": "gptq", "gptq_calibration_samples": 8, "gptq_sequence_length": 128,
        "gptq_sensitive_layers_precision": "int8", "gptq_target_modules": "all_but_output_head",
    }, device="cpu")
    config.add_tokenizer(tokenizer)
    config.add_data("PydocTopics")
    smashed = smash(model, config, verbose=False)
    packed = {name for name, module in smashed.model.named_modules() if isinstance(module, PackedLinear)}
    assert packed == block_layers and len(packed) >= 8
    assert_reloads_exactly(smashed, inputs, tmp_path / "saved")


def assert_reloads_exactly(smashed, inputs, folder):
    """A saved smashed model loads back into the same layers and gives the same logits, bit for bit."""
    from smashlib import SmashedModel

    with torch.no_grad():
        before = smashed(**inputs).logits
    smashed.save_pretrained(folder)
    with torch.no_grad():
        assert torch.equal(SmashedModel.from_pretrained(folder)(**inputs).logits, before)


def test_falcon_linear_layers_are_quantized_as_plain_linears(tmp_path):
    """FalconLinear subclasses nn.Linear to add its bias after the product: targeted like nn.Linear, and
    handed to torchao as a plain nn.Linear on the same parameters (torchao's weights implement F.linear),
    at smash time and when loading."""
    from smashlib.targets import is_linear, is_nn_linear

    model = build_tiny("falcon")
    layer = model.transformer.h[0].mlp.dense_h_to_4h
    assert type(layer).__name__ == "FalconLinear" and is_nn_linear(layer) and is_linear(layer)
    config = SmashConfig(QUANTIZERS["torchao"][0], device="cpu")
    if registry.get_algorithm("torchao").missing_packages():
        pytest.skip("torchao is not installed")
    smashed = smash(model, config, verbose=False)
    assert type(smashed.model.transformer.h[0].mlp.dense_h_to_4h) is torch.nn.Linear
    assert_reloads_exactly(smashed, tiny_inputs("falcon"), tmp_path / "saved")


def test_quantized_nn_linear_subclasses_are_never_taken_for_plain_ones():
    from smashlib.targets import is_nn_linear

    class Quantized(torch.nn.Linear):  # what bitsandbytes' and quanto's layers look like
        pass

    assert not is_nn_linear(Quantized(4, 4)) and is_nn_linear(torch.nn.Linear(4, 4))


@pytest.mark.parametrize("quantizer", ["bnb_4bit", "hqq", "torch_dynamic"])
def test_layers_the_model_keeps_in_float_are_left_out_unless_included_by_name(quantizer):
    """T5 keeps ``wo`` in float32 (``_keep_in_fp32_modules``) and casts its input to ``wo.weight.dtype``:
    quantized by bnb_4bit, to uint8 codes (relative logit error 1.44 on tiny T5); by hqq, a crash. Quantizers
    leave it out, as transformers' own do, unless ``"@kept_in_float"`` is included."""
    values = QUANTIZERS[quantizer][0]
    if registry.get_algorithm(values["quantizer"]).missing_packages():
        pytest.skip(f"{quantizer} is not installed")
    smashed = smash(build_tiny("t5"), SmashConfig(values, device="cpu"), verbose=False)
    wo = [name for name, module in smashed.model.named_modules() if name.endswith(".wo")]
    assert len(wo) == 4 and all(type(smashed.model.get_submodule(name)) is torch.nn.Linear for name in wo)
    include_all = {**values, f"{quantizer}_target_modules": {"include": ["*", "@kept_in_float"]}}
    smashed = smash(build_tiny("t5"), SmashConfig(include_all, device="cpu"), verbose=False)
    assert all(type(smashed.model.get_submodule(name)) is not torch.nn.Linear for name in wo)


def test_mamba_layers_read_as_weights_stay_in_float():
    from smashlib.targets import kept_in_float

    kept = kept_in_float(build_tiny("mamba"))
    assert kept == {"backbone.layers.0.mixer.dt_proj", "backbone.layers.1.mixer.dt_proj", "lm_head"}


@pytest.mark.parametrize("family", ["whisper", "mamba"])
def test_lora_recoverer_refuses_models_it_cannot_train_before_the_quantizer_runs(family):
    """Whisper reads speech, not the token batches it trains on; Mamba's training forward hands raw weights
    to a fused kernel. Both used to fail in the first training step, after hqq had run."""
    from smashlib.errors import UnsupportedModelError
    from tests.tiny_models import tiny_tokenizer

    if registry.get_algorithm("lora_recoverer").missing_packages():
        pytest.skip("lora_recoverer needs peft")
    model = build_tiny(family)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    config = SmashConfig({"quantizer": "hqq", "recoverer": "lora_recoverer"}, device="cpu")
    config.add_tokenizer(tiny_tokenizer())
    config.add_data("PydocTopics")
    with pytest.raises(UnsupportedModelError, match="lora_recoverer"):
        smash(model, config, verbose=False)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("teacher", ["original", "none"])
def test_lora_recoverer_trains_text_encoder_decoders_on_the_text_shifted_right(family, teacher, tmp_path):
    """T5 and BART get the text itself as decoder inputs, shifted right, as they build them from labels in
    training; recovered T5 is closer to the original than the quantized one on held-out text (the teacher's
    logits), the next-token loss falls without a teacher, and the adapters over hqq's layers reload exactly."""
    from smashlib import SmashedModel
    from smashlib.training import loop
    from tests.tiny_models import tiny_tokenizer

    if registry.get_algorithm("lora_recoverer").missing_packages():
        pytest.skip("lora_recoverer needs peft")
    from smashlib.data import SmashDataModule, calibration_batches
    from smashlib.data.calibration import with_decoder_inputs

    model = build_tiny(family)
    held_out = SmashDataModule.from_string("PydocTopics", tokenizer=tiny_tokenizer())
    inputs = with_decoder_inputs(model, calibration_batches(SimpleNamespace(data=held_out), 2, 64, 2, split="test")[0])
    with torch.no_grad():
        reference = model(**inputs).logits
    quantizer = {"quantizer": "hqq", "hqq_weight_bits": 2, "hqq_group_size": 32}
    recoverer = {"recoverer": "lora_recoverer", "lora_recoverer_steps": 16, "lora_recoverer_learning_rate": 3e-3,
                 "lora_recoverer_batch_size": 2, "lora_recoverer_sequence_length": 128, "lora_recoverer_teacher": teacher}

    def smashed_with(recovered: bool):
        config = SmashConfig({**quantizer, **(recoverer if recovered else {})}, device="cpu")
        config.add_tokenizer(tiny_tokenizer())
        config.add_data("PydocTopics")
        return smash(build_tiny(family), config, verbose=False)

    losses, decoder_inputs_right = [], []
    original_train = loop.train_to_match

    def recording(student, batches, *args, **kwargs):
        decoder_inputs_right.extend(
            torch.equal(b["decoder_input_ids"], student.prepare_decoder_input_ids_from_labels(labels=b["input_ids"]))
            for b in batches
        )
        log = original_train(student, batches, *args, **kwargs)
        losses.extend(log.losses)
        return log

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("smashlib.algorithms.recoverer.lora_recoverer.train_to_match", recording)
        recovered = smashed_with(True)
    quantized = smashed_with(False)
    with torch.no_grad():
        errors = {name: (m(**inputs).logits - reference).norm().item() for name, m in [("quantized", quantized), ("recovered", recovered)]}
    assert decoder_inputs_right and all(decoder_inputs_right)
    if teacher == "none":
        assert sum(losses[-4:]) < sum(losses[:4]), losses
    elif family == "t5":  # tiny random BART's logits are near uniform: its KL starts at 1e-3, with nothing to win
        assert errors["recovered"] < errors["quantized"], errors
    recovered.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, recovered(**inputs).logits)
