"""compressed-tensors export: plain transformers loads the folder and computes what smashlib computes,
the config validates against the package's own schema, the package's decompressor gives back our
weights exactly, and what the format cannot hold is refused."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from smashlib import SmashConfig, smash
from smashlib.errors import UnsupportedExportError
from smashlib.layers.packed_int import PackedLinear
from tests.tiny_models import build_tiny, tiny_inputs, tiny_tokenizer

pytest.importorskip("compressed_tensors")

FAST = {"gptq_calibration_samples": 8, "gptq_sequence_length": 128}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def smash_gptq(tokenizer, **values):
    config = SmashConfig({"quantizer": "gptq", **FAST, **values}, device="cpu")
    config.add_tokenizer(tokenizer)
    config.add_data("PydocTopics")
    return smash(build_tiny("llama"), config, verbose=False)


def config_of(folder):
    return json.loads((folder / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize(
    "values, expected_format",
    [
        ({"gptq_grid": "q4_0", "gptq_weight_bits": 4}, "pack-quantized"),  # symmetric int4, groups of 32
        ({"gptq_weight_bits": 8, "gptq_group_size": -1}, "int-quantized"),  # int8, one scale per channel
        ({"gptq_grid": "q4_0", "gptq_output_head_precision": "int8"}, "mixed-precision"),  # int4 layers, int8 head
        # llama.cpp's _M rule: block 1's v_proj and down_proj (the layer compared below) at 8 bits (Q8_0 blocks);
        # symmetric grids, as asymmetric int4 does not load in plain transformers (see docs/export.md)
        ({"gptq_grid": "q4_0", "gptq_sensitive_layers_precision": "int8"}, "mixed-precision"),
    ],
)
def test_plain_transformers_loads_it_and_computes_smashlibs_logits(tokenizer, tmp_path, values, expected_format):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM

    smashed = smash_gptq(tokenizer, **values)
    folder = smashed.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    quantization = config_of(folder)
    assert quantization["format"] == expected_format
    QuantizationConfig.model_validate(quantization)  # the package's pydantic schema
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        ours = smashed(**inputs).logits.float()
        theirs = loaded(**inputs).logits.float()
    # same weights; smashlib runs bf16 activations on its int4/int8 kernels, transformers bf16 weights
    assert (ours - theirs).abs().max() < 0.02 * ours.abs().max(), (ours - theirs).abs().max()
    # and the weights transformers decompressed are smashlib's, up to its bf16 storage of them
    layer = smashed.model.model.layers[1].mlp.down_proj
    weight = loaded.model.layers[1].mlp.down_proj.weight.detach().float()
    assert torch.allclose(weight, layer.dequantize(), rtol=2**-8, atol=0)


def test_asymmetric_grids_are_the_packages_own_tensors(tokenizer, tmp_path):
    """Default gptq (asymmetric int4, groups of 32, no act-order): vLLM's format, and the package's own
    decompressor recovers smashlib's weights bit for bit."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    smashed = smash_gptq(tokenizer, gptq_desc_act=False)
    with pytest.warns(UserWarning, match="llm-compressor#1618"):
        folder = smashed.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    config = QuantizationConfig.model_validate(config_of(folder))
    assert config.format == "pack-quantized"
    (scheme,) = config.config_groups.values()
    assert (scheme.weights.num_bits, scheme.weights.group_size, scheme.weights.symmetric) == (4, 32, False)
    tensors = load_file(str(folder / "model.safetensors"))
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    for name, module in smashed.model.named_modules():
        if not isinstance(module, PackedLinear):
            continue
        assert tensors[f"{name}.weight_packed"].dtype == torch.int32
        local = {key.split(".")[-1]: value for key, value in tensors.items() if key.rsplit(".", 1)[0] == name}
        local["weight_scale"] = local["weight_scale"].float()
        weight = compressor.decompress(local, scheme)["weight"]
        assert torch.equal(weight.float(), module.dequantize()), name
    # the packed head's tied embedding is written dense (an engine's embedding cannot read packed rows)
    assert torch.equal(tensors["model.embed_tokens.weight"], smashed.model.lm_head.dequantize())
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False


def test_act_order_with_groups_is_refused_with_the_fix(tokenizer, tmp_path):
    smashed = smash_gptq(tokenizer, gptq_desc_act=True)
    with pytest.raises(UnsupportedExportError, match="gptq_desc_act=False, or gptq_group_size=-1"):
        smashed.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    assert not (tmp_path / "ct").exists()


@pytest.mark.parametrize("pruner", [{"pruner": "torch_structured", "torch_structured_sparsity": 0.5},
                                    {"distiller": "depth_distiller", "depth_distiller_keep_layers": 1,
                                     "depth_distiller_steps": 0, "depth_distiller_layer_selection": "evenly_spaced"},
                                    {"pruner": "torch_unstructured", "torch_unstructured_sparsity": 0.5}],
                         ids=["torch_structured", "depth_distiller", "torch_unstructured"])
def test_a_pruned_and_quantized_model_loads_in_plain_transformers(pruner, tokenizer, tmp_path):
    """Pruning leaves a smaller model its config.json describes: the export writes it as any other."""
    smashed = smash_gptq(tokenizer, gptq_weight_bits=8, gptq_group_size=-1, **pruner)
    if "torch_unstructured_sparsity" not in pruner:  # zeros keep the shapes
        assert smashed.model.num_parameters() < build_tiny("llama").num_parameters()
    smashed.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32).eval()
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        ours, theirs = smashed(**inputs).logits.float(), plain(**inputs).logits.float()
    assert ((theirs - ours).norm() / ours.norm()).item() < 1e-3


def test_other_algorithms_are_refused(tmp_path):
    smashed = smash(build_tiny("llama"), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False)
    with warnings.catch_warnings(), pytest.raises(UnsupportedExportError, match="gptq"):
        smashed.save_pretrained(tmp_path / "ct", format="compressed-tensors")


MOE_GRIDS = [
    {"gptq_grid": "q4_0", "gptq_weight_bits": 4, "gptq_group_size": 32},  # symmetric int4, groups of 32
    {"gptq_weight_bits": 8, "gptq_group_size": -1},  # int8 per channel: packed for experts (transformers' rule)
    {"gptq_weight_bits": 8, "gptq_group_size": -1, "gptq_target_modules": {"exclude": ["*experts*"]}},  # float experts
]


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("values", MOE_GRIDS, ids=["int4", "int8", "float-experts"])
def test_moe_experts_are_written_as_transformers_checkpoints_lay_them_out(family, values, tmp_path):
    """smashlib's split experts (one gate_up_proj.<e> layer) go back to the checkpoint's per-expert
    linears (Mixtral's w1 / w3 / w2, Qwen-MoE's gate_proj / up_proj / down_proj), which transformers merges
    into its fused weights while loading: every expert's weights are smashlib's."""
    from transformers import AutoModelForCausalLM

    config = SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", **values}, device="cpu")
    smashed = smash(build_tiny(family), config, verbose=False)
    folder = smashed.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ours, theirs = smashed.model.model.layers[1].mlp.experts, loaded.model.layers[1].mlp.experts
    for expert in range(4):
        for projection in ("gate_up_proj", "down_proj"):
            layer = getattr(ours, projection)[expert]
            weight = layer.dequantize() if isinstance(layer, PackedLinear) else layer.weight.detach()
            assert torch.allclose(getattr(theirs, projection)[expert].float(), weight, rtol=2**-8, atol=0)
    inputs = tiny_inputs(family)
    with torch.no_grad():
        expected, logits = smashed(**inputs).logits.float(), loaded(**inputs).logits.float()
    assert (expected - logits).norm() < 0.02 * expected.norm()  # bf16 (the loaded model's dtype)


def test_moe_experts_fused_in_the_checkpoint_or_partly_quantized_are_refused(tmp_path):
    gpt_oss = smash(build_tiny("gpt_oss"), SmashConfig({"quantizer": "gptq", "gptq_method": "rtn"}, device="cpu"), verbose=False)
    with pytest.raises(UnsupportedExportError, match="fused experts"):
        gpt_oss.save_pretrained(tmp_path / "a", format="compressed-tensors")
    partly = SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", "gptq_target_modules": {"exclude": ["*experts.down_proj.1"]}}, device="cpu")
    mixtral = smash(build_tiny("mixtral"), partly, verbose=False)
    with pytest.raises(UnsupportedExportError, match="3 of its 4 experts"):
        mixtral.save_pretrained(tmp_path / "b", format="compressed-tensors")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("family", ["gemma3", "phi", "opt", "gpt_neox", "falcon", "bloom", "llava", "qwen2_vl", "t5", "bart", "bert"])
def test_every_linear_family_loads_in_plain_transformers(family, tmp_path):
    """Names as the checkpoint has them (GPT-NeoX's head is embed_out there, lm_head in the model) and
    config targets as the model has them: transformers quantizes every layer it reads."""
    config = SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", "gptq_weight_bits": 8, "gptq_group_size": -1}, device="cpu")
    smashed = smash(build_tiny(family), config, verbose=False)
    folder = smashed.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    loaded = type(smashed.model).from_pretrained(folder).eval()  # the class transformers' Auto* picks for it
    inputs = tiny_inputs(family)
    with torch.no_grad():
        expected, logits = smashed(**inputs).logits.float(), loaded(**inputs).logits.float()
    assert (expected - logits).norm() < 0.02 * expected.norm()


def test_gpt2_conv1d_layers_are_refused(tmp_path):
    config = SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", "gptq_weight_bits": 8, "gptq_group_size": -1}, device="cpu")
    smashed = smash(build_tiny("gpt2"), config, verbose=False)
    with pytest.raises(UnsupportedExportError, match="Conv1D"):
        smashed.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    assert not (tmp_path / "ct").exists()
