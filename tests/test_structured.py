"""torch_structured, depth_distiller, lora_recoverer and the training loop they share, on tiny models."""
from __future__ import annotations

import pytest
import torch
import transformers

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.errors import HyperparameterValueError, MissingComponentError, UnsupportedModelError
from smashlib.training import TrainingOptions, train_to_match, watch_training
from tests.tiny_models import build_tiny, tiny_inputs, tiny_tokenizer

#: A small training budget: tiny models, one short sequence per step
FAST = {"batch_size": 1, "steps": 6}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _config(values, tokenizer=None, data=True):
    cfg = SmashConfig(values, device="cpu")
    if tokenizer is not None:
        cfg.add_tokenizer(tokenizer)
        if data:
            cfg.add_data("PydocTopics")
    return cfg


def _logits(model, name="llama"):
    with torch.no_grad():
        return model(**tiny_inputs(name)).logits


def _count(model):
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---------------------------------------------------------------------------------------------- pruner
def test_pruning_heads_and_mlp_shrinks_matrices_and_config():
    model = build_tiny("llama")  # 4 query heads in 2 KV groups, head_dim 16, MLP 128
    cfg = _config({"pruner": "torch_structured", "torch_structured_importance": "magnitude",
                   "torch_structured_sparsity": 0.5})
    smashed = smash(model, cfg, verbose=False)
    config = smashed.model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 16)
    attention = smashed.model.model.layers[0].self_attn
    assert attention.q_proj.weight.shape == (32, 64) and attention.k_proj.weight.shape == (16, 64)
    assert attention.o_proj.weight.shape == (64, 32)
    mlp = smashed.model.model.layers[1].mlp
    assert config.intermediate_size == mlp.up_proj.out_features == mlp.down_proj.in_features < 128
    assert mlp.gate_proj.weight.shape[0] == config.intermediate_size
    assert _logits(smashed).shape == (2, 8, 256)


def test_the_sparsity_is_the_fraction_of_pruned_parameters_removed():
    model = build_tiny("llama")
    blocks = model.model.layers
    before = sum(p.numel() for b in blocks for p in (*b.self_attn.parameters(), *b.mlp.parameters()))
    cfg = _config({"pruner": "torch_structured", "torch_structured_importance": "magnitude",
                   "torch_structured_sparsity": 0.25, "torch_structured_target": "mlp"})
    smash(model, cfg, verbose=False)
    after = sum(p.numel() for b in blocks for p in (*b.self_attn.parameters(), *b.mlp.parameters()))
    mlp_before = 3 * 64 * 128 * 2
    assert (before - after) / mlp_before == pytest.approx(0.25, abs=0.04)


@pytest.mark.parametrize("name, target", [("llama", "both"), ("llama", "layers"), ("gpt2", "mlp"), ("bert", "mlp"),
                                          ("gpt2", "layers")])
def test_pruned_model_loads_with_transformers_own_class_and_smashlib(name, target, tokenizer, tmp_path):
    model = build_tiny(name)
    cfg = _config({"pruner": "torch_structured", "torch_structured_target": target}, tokenizer)
    smashed = smash(model, cfg, verbose=False)
    assert _count(smashed.model) < _count(build_tiny(name))
    expected = _logits(smashed, name)
    smashed.save_pretrained(tmp_path)
    auto = transformers.AutoModelForCausalLM if name != "bert" else transformers.AutoModelForSequenceClassification
    plain = auto.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(plain, name), expected)
    torch.testing.assert_close(_logits(SmashedModel.from_pretrained(tmp_path), name), expected)


#: Families beyond the three above, with the widest cut their configs can express
MORE_FAMILIES = [("gemma3", "both"), ("gemma2", "both"), ("qwen2", "both"), ("qwen3", "both"), ("mistral", "both"),
                 ("phi3", "mlp"), ("phi", "mlp"), ("opt", "mlp"), ("gpt_neox", "mlp"), ("falcon", "mlp")]


def _mlp_downs(model):
    from smashlib.pruning import blocks_of, find_family
    from smashlib.pruning.families import sub

    family = find_family(model)
    return [sub(block, family.mlp_out) for block in blocks_of(model, family)]


@pytest.mark.parametrize("name", [name for name, _ in MORE_FAMILIES])
def test_cutting_mlp_channels_equals_silencing_them_in_the_original(name, tokenizer):
    """The kept channels' up/gate rows still meet their own down column (Phi-3's fused [gate; up] halves too)."""
    original = build_tiny(name)
    cfg = _config({"pruner": "torch_structured", "torch_structured_target": "mlp",
                   "torch_structured_sparsity": 0.5}, tokenizer)
    pruned = smash(build_tiny(name), cfg, verbose=False).model
    for full, cut in zip(_mlp_downs(original), _mlp_downs(pruned)):
        assert cut.in_features < full.in_features
        # each kept column is a column of the original; silence every other channel of the original
        kept = [int((full.weight - column[:, None]).abs().sum(0).argmin()) for column in cut.weight.t()]
        assert torch.equal(full.weight[:, kept], cut.weight)
        with torch.no_grad():
            silenced = torch.ones(full.in_features, dtype=torch.bool)
            silenced[kept] = False
            full.weight[:, silenced] = 0
    torch.testing.assert_close(_logits(pruned, name), _logits(original, name))


@pytest.mark.parametrize("name, target", [*MORE_FAMILIES, *((name, "layers") for name, _ in MORE_FAMILIES[::3])])
def test_more_families_are_cut_and_load_back_in_plain_transformers(name, target, tokenizer, tmp_path):
    cfg = _config({"pruner": "torch_structured", "torch_structured_target": target,
                   "torch_structured_sparsity": 0.5}, tokenizer)
    smashed = smash(build_tiny(name), cfg, verbose=False)
    assert _count(smashed.model) < _count(build_tiny(name))
    if target == "both":
        assert smashed.model.config.num_key_value_heads == 1
    expected = _logits(smashed, name)
    smashed.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(plain, name), expected)
    torch.testing.assert_close(_logits(SmashedModel.from_pretrained(tmp_path).model, name), expected)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "gpt_oss", "bloom", "mamba"])
def test_layer_only_families_lose_layers_and_load_back(name, tokenizer, tmp_path):
    model = build_tiny(name)
    if name == "qwen2_moe":
        model.config.mlp_only_layers = [1]  # the second block has a dense MLP: it must stay dense when renumbered
        model = type(model)(model.config).eval()
    cfg = _config({"pruner": "torch_structured", "torch_structured_target": "layers",
                   "torch_structured_sparsity": 0.5}, tokenizer)
    smashed = smash(model, cfg, verbose=False)
    assert smashed.model.config.num_hidden_layers == 1
    expected = _logits(smashed, name)
    smashed.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(plain, name), expected)
    if name == "qwen2_moe":
        kept = smashed.model.model.layers[0]
        assert type(plain.model.layers[0].mlp) is type(kept.mlp)


def test_qwen_moe_dense_blocks_stay_dense_when_renumbered(tmp_path):
    """Keeping only the last block, the dense one (mlp_only_layers=[1]), makes it block 0: the config must say so."""
    config = build_tiny("qwen2_moe").config
    config.mlp_only_layers = [1]
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    smashed = smash(model, _config(_distiller(steps=0, layer_selection="evenly_spaced")), verbose=False)
    assert smashed.model.config.mlp_only_layers == [0]
    expected = _logits(smashed, "qwen2_moe")
    smashed.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path), "qwen2_moe"), expected)


@pytest.mark.parametrize("name", ["mixtral", "bloom", "mamba"])
def test_layer_only_families_refuse_channel_cuts_and_say_why(name):
    cfg = _config({"pruner": "torch_structured", "torch_structured_importance": "magnitude",
                   "torch_structured_target": "mlp"})
    with pytest.raises(UnsupportedModelError, match="cannot remove MLP channels.*torch_structured_target='layers'"):
        smash(build_tiny(name), cfg, verbose=False)


def test_index_dependent_block_kinds_are_refused_before_anything_is_cut(tokenizer):
    model = build_tiny("qwen2_moe")
    model.config.decoder_sparse_step = 2
    cfg = _config({"pruner": "torch_structured", "torch_structured_target": "layers"}, tokenizer)
    with pytest.raises(UnsupportedModelError, match="decoder_sparse_step=2"):
        smash(model, cfg, verbose=False)
    assert len(model.model.layers) == 2


@pytest.mark.parametrize("name", ["phi3", "falcon"])
def test_fused_attention_families_refuse_head_cuts_and_say_why(name):
    cfg = _config({"pruner": "torch_structured", "torch_structured_importance": "magnitude",
                   "torch_structured_target": "heads"})
    with pytest.raises(UnsupportedModelError, match="fuses q, k and v.*torch_structured_target='mlp'"):
        smash(build_tiny(name), cfg, verbose=False)


def test_removed_layers_follow_the_config_and_the_cache():
    model = build_tiny("llama")
    cfg = _config({"pruner": "torch_structured", "torch_structured_target": "layers",
                   "torch_structured_sparsity": 0.5}, tiny_tokenizer())
    smashed = smash(model, cfg, verbose=False)
    assert smashed.model.config.num_hidden_layers == len(smashed.model.model.layers) == 1
    assert smashed.model.model.layers[0].self_attn.layer_idx == 0
    ids = tiny_inputs("llama")["input_ids"][:1]
    out = smashed.generate(input_ids=ids, max_new_tokens=4, do_sample=False)  # uses the KV cache
    assert out.shape == (1, 12)


def test_gpt2_heads_are_refused_before_anything_is_cut():
    model = build_tiny("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _config({"pruner": "torch_structured", "torch_structured_importance": "magnitude",
                   "torch_structured_target": "heads"})
    with pytest.raises(UnsupportedModelError, match="head_dim.*torch_structured_target='mlp'"):
        smash(model, cfg, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unsupported_model_names_the_supported_families():
    cfg = _config({"pruner": "torch_structured", "torch_structured_importance": "magnitude"})
    with pytest.raises(UnsupportedModelError, match="Llama-like.*GPT-2.*BERT"):
        smash(build_tiny("t5"), cfg, verbose=False)


def test_activation_importance_needs_data():
    cfg = _config({"pruner": "torch_structured", "torch_structured_importance": "activation"})
    with pytest.raises(MissingComponentError, match="add_data|add_tokenizer"):
        smash(build_tiny("llama"), cfg, verbose=False)


def test_activation_importance_keeps_the_model_closer_than_random_choice(tokenizer):
    reference = _logits(build_tiny("llama"))

    def error(importance):
        cfg = _config({"pruner": "torch_structured", "torch_structured_importance": importance,
                       "torch_structured_target": "mlp", "torch_structured_sparsity": 0.5}, tokenizer)
        return (_logits(smash(build_tiny("llama"), cfg, verbose=False)) - reference).pow(2).mean().item()

    from smashlib.pruning import surgery

    random_model = build_tiny("llama")
    from smashlib.pruning import find_family

    generator = torch.Generator().manual_seed(0)
    surgery.keep_channels(random_model, find_family(random_model),
                          [torch.randperm(128, generator=generator)[:64] for _ in range(2)])
    random_error = (_logits(random_model) - reference).pow(2).mean().item()
    assert error("activation") < random_error


# ---------------------------------------------------------------------------------------------- training loop
def test_training_lowers_the_loss_and_a_seed_reproduces_it(tokenizer):
    from pydoc_data.topics import topics

    from smashlib.data import pack_texts

    batches = pack_texts(list(topics.values())[:20], tokenizer, 32, n_samples=4, batch_size=2)

    def run(seed):
        teacher, student = build_tiny("llama"), build_tiny("llama")
        student.model.layers = student.model.layers[:1]
        student.config.num_hidden_layers = 1
        options = TrainingOptions(steps=12, learning_rate=3e-3, temperature=2.0, seed=seed)
        log = train_to_match(student, batches, options, list(student.parameters()), teacher, verbose=False)
        return log, student

    log, student = run(0)
    assert sum(log.losses[-3:]) < 0.8 * sum(log.losses[:3])
    again, twin = run(0)
    assert again.losses == log.losses
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), twin.state_dict().values()))
    assert run(1)[0].losses != log.losses


def test_without_a_teacher_the_loss_is_the_next_token_loss(tokenizer):
    from pydoc_data.topics import topics

    from smashlib.data import pack_texts

    batches = pack_texts(list(topics.values())[:20], tokenizer, 32, n_samples=2, batch_size=2)
    model = build_tiny("llama")
    log = train_to_match(model, batches, TrainingOptions(steps=1, learning_rate=0.0), list(model.parameters()),
                         verbose=False)
    with torch.no_grad():
        expected = model(**batches[0], labels=batches[0]["input_ids"]).loss.item()
    assert log.losses[0] == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------------------------- distiller
def _distiller(**settings):
    values = {"distiller": "depth_distiller", "depth_distiller_keep_layers": 1}
    values.update({f"depth_distiller_{k}": v for k, v in {**FAST, **settings}.items()})
    return values


def test_distiller_keeps_fewer_layers_and_lowers_the_loss(tokenizer):
    teacher = build_tiny("llama")
    reference = _logits(teacher)

    def gap(model):
        return (model(**tiny_inputs("llama")).logits - reference).pow(2).mean().item()

    cfg = _config(_distiller(steps=20, learning_rate=3e-3), tokenizer)
    with watch_training(gap, every=20) as logs:
        smashed = smash(build_tiny("llama"), cfg, verbose=False)
    assert smashed.model.config.num_hidden_layers == len(smashed.model.model.layers) == 1
    (log,) = logs
    assert log.evaluations[-1][1] < log.evaluations[0][1]  # closer to the teacher than the truncated student


@pytest.mark.parametrize("name", ["gemma3", "phi3", "opt", "mixtral", "mamba"])
def test_distiller_trains_other_families_and_they_load_back(name, tokenizer, tmp_path):
    smashed = smash(build_tiny(name), _config(_distiller(), tokenizer), verbose=False)
    from smashlib.pruning import blocks_of, find_family

    assert smashed.model.config.num_hidden_layers == len(blocks_of(smashed.model, find_family(smashed.model))) == 1
    expected = _logits(smashed, name)
    smashed.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path), name), expected)


def test_distiller_seed_reproduces(tokenizer):
    first = _logits(smash(build_tiny("llama"), _config(_distiller(), tokenizer), verbose=False))
    again = _logits(smash(build_tiny("llama"), _config(_distiller(), tokenizer), verbose=False))
    other = _logits(smash(build_tiny("llama"), _config(_distiller(seed=1), tokenizer), verbose=False))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_distiller_refuses_keeping_every_layer_before_touching_the_model(tokenizer):
    model = build_tiny("llama")
    with pytest.raises(HyperparameterValueError, match="keeps every layer.*choose 1 to 1"):
        smash(model, _config(_distiller(keep_layers=2), tokenizer), verbose=False)
    assert len(model.model.layers) == 2


def test_distiller_needs_data_to_train():
    with pytest.raises(MissingComponentError):
        smash(build_tiny("llama"), _config(_distiller()), verbose=False)


def test_distiller_with_zero_steps_is_plain_truncation_without_data():
    smashed = smash(build_tiny("llama"), _config(_distiller(steps=0)), verbose=False)
    assert len(smashed.model.model.layers) == 1


def test_distiller_gptq_and_torch_compile_are_one_config(tokenizer, tmp_path):
    values = {**_distiller(steps=2), "quantizer": "gptq", "gptq_calibration_samples": 8, "compiler": "torch_compile"}
    smashed = smash(build_tiny("llama"), _config(values, tokenizer), verbose=False)
    expected = _logits(smashed)
    smashed.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(SmashedModel.from_pretrained(tmp_path)), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- recoverer
def _recoverer(**settings):
    values = {"recoverer": "lora_recoverer"}
    values.update({f"lora_recoverer_{k}": v for k, v in {**FAST, **settings}.items()})
    return values


def test_recoverer_merges_adapters_into_pruned_weights_and_moves_toward_the_original(tokenizer, tmp_path):
    pytest.importorskip("peft")
    from pydoc_data.topics import topics

    from smashlib.data import pack_texts
    from smashlib.training.loop import logit_loss

    held_out = pack_texts(list(topics.values())[-30:], tokenizer, 64, n_samples=4, batch_size=4)[0]
    with torch.no_grad():
        reference = build_tiny("llama")(**held_out).logits

    def gap(model):  # KL to the original on text never trained on
        return logit_loss(model(**held_out).logits, reference, 1.0).item()

    values = {"pruner": "torch_structured", "torch_structured_sparsity": 0.5,
              **_recoverer(steps=30, learning_rate=1e-3, rank=8, batch_size=2)}
    with watch_training(gap, every=30) as logs:
        smashed = smash(build_tiny("llama"), _config(values, tokenizer), verbose=False)
    assert logs[0].evaluations[-1][1] < logs[0].evaluations[0][1]
    assert not [n for n, _ in smashed.model.named_modules() if "lora" in n]  # merged: plain layers left
    assert type(smashed.model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert not smashed.smash_config.components.kept  # the teacher copy is gone
    expected = _logits(smashed)
    smashed.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(plain), expected)


def test_recoverer_keeps_adapters_over_quantized_layers_and_they_reload(tokenizer, tmp_path):
    pytest.importorskip("peft")
    from smashlib.training.lora import QuantizedLoRA

    values = {"quantizer": "gptq", "gptq_calibration_samples": 8, **_recoverer(steps=3, learning_rate=1e-2)}
    smashed = smash(build_tiny("llama"), _config(values, tokenizer), verbose=False)
    adapters = [m for m in smashed.model.modules() if isinstance(m, QuantizedLoRA)]
    assert adapters and any(m.lora_B.weight.abs().sum() > 0 for m in adapters)  # trained, not the zero start
    expected = _logits(smashed)
    smashed.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(SmashedModel.from_pretrained(tmp_path)), expected)


def test_recoverer_target_modules_select_the_adapted_layers(tokenizer):
    pytest.importorskip("peft")
    from smashlib.training.lora import QuantizedLoRA

    values = {"quantizer": "gptq", "gptq_calibration_samples": 8,
              **_recoverer(steps=1, target_modules={"include": ["down_proj"]})}
    smashed = smash(build_tiny("llama"), _config(values, tokenizer), verbose=False)
    wrapped = [n for n, m in smashed.model.named_modules() if isinstance(m, QuantizedLoRA)]
    assert wrapped == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_recoverer_without_teacher_keeps_nothing(tokenizer):
    pytest.importorskip("peft")
    from smashlib.components import Components
    from smashlib.registry import get_algorithm

    components = Components()
    settings = _config(_recoverer(teacher="none"), tokenizer).settings_for(get_algorithm("lora_recoverer"))
    get_algorithm("lora_recoverer").prepare_run(build_tiny("llama"), settings, components)
    assert components.kept == {}
    settings["teacher"] = "original"
    get_algorithm("lora_recoverer").prepare_run(build_tiny("llama"), settings, components)
    assert isinstance(components.kept["lora_recoverer"], torch.nn.Module)


def test_recoverer_names_a_target_pattern_that_matches_nothing(tokenizer):
    pytest.importorskip("peft")
    cfg = _config(_recoverer(target_modules={"include": ["no_such_layer"]}), tokenizer)
    with pytest.raises(HyperparameterValueError, match="no_such_layer"):
        smash(build_tiny("llama"), cfg, verbose=False)
