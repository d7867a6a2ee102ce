"""Folders saved by smashlib before target_modules (smash_config.json schema 1) still load, to the same outputs.

tests/fixtures/schema1/<algorithm>/ was written by make_fixtures.py with main at 7a6bc76 (keep_full_precision,
keep_output_head and gptq_output_head), with the logits the smashed model gave on fixed ids.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smashlib import SmashConfig, SmashedModel, registry, smash
from smashlib.config import with_kept_in_float
from smashlib.layers.cpu_features import has_native_bf16
from smashlib.layers.int8_linear import reduce_range

FIXTURES = Path(__file__).parent / "fixtures" / "schema1"
#: What each old setting became (the same layers are quantized: the logits below prove it). A quantizer's
#: selection is written out with "@kept_in_float": schema 5 made quantizers leave out the layers a model keeps in
#: float (T5's wo), which an older config selected like the rest.
UPGRADED = {
    "torch_dynamic": {"torch_dynamic_target_modules": with_kept_in_float("all_linear")},
    "torchao": {"torchao_target_modules": with_kept_in_float("all_but_outlier_layers")},
    "quanto": {"quanto_target_modules": with_kept_in_float("all_but_outlier_layers_and_output_head")},
    "hqq": {"hqq_target_modules": with_kept_in_float("all_but_output_head")},
    "bnb_4bit": {"bnb_4bit_target_modules": with_kept_in_float("all_linear")},
    "llm_int8": {"llm_int8_target_modules": with_kept_in_float("all_but_output_head")},
    "torch_unstructured": {"torch_unstructured_target_modules": "all_linear"},  # a pruner: unchanged
    "gptq": {"gptq_target_modules": with_kept_in_float("all_linear"), "gptq_output_head_precision": "int8"},
}


#: Kernels whose outputs depend on the CPU, and whether this CPU is like the one that made the fixtures (AVX512
#: with VNNI and BF16): fbgemm keeps 8-bit activations only with VNNI; bitsandbytes' 4-bit CPU kernel is its
#: repacked bf16 one only with AVX512-BF16. Elsewhere the saved logits are not this machine's, so the loaded
#: folder must instead equal the same (upgraded) settings smashed here.
LIKE_THE_FIXTURES_CPU = {"torch_dynamic": lambda: not reduce_range(), "bnb_4bit": has_native_bf16}


def tiny_model():
    """make_fixtures.py's model (seeded, so the same weights)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=32,
                                      tie_word_embeddings=True)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("name", sorted(UPGRADED))
def test_a_schema1_folder_loads_with_its_settings_upgraded_and_gives_the_saved_logits(name):
    if registry.get_algorithm(name).missing_packages():
        pytest.skip(f"{name} needs {registry.get_algorithm(name).missing_packages()}")
    folder = FIXTURES / name
    assert json.loads((folder / "smash_config.json").read_text())["schema_version"] == 1
    loaded = SmashedModel.from_pretrained(folder, device="cpu")
    for key, value in UPGRADED[name].items():
        assert loaded.smash_config[key] == value
    expected = json.loads((folder / "expected_logits.json").read_text())
    with torch.no_grad():
        logits = loaded(input_ids=torch.tensor(expected["input_ids"])).logits
    reference = torch.tensor(expected["logits"])
    if not LIKE_THE_FIXTURES_CPU.get(name, lambda: True)():
        with torch.no_grad():
            reference = smash(tiny_model(), loaded.smash_config, verbose=False)(input_ids=torch.tensor(expected["input_ids"])).logits
    assert torch.allclose(logits, reference, rtol=1e-4, atol=1e-4), (logits - reference).abs().max()


def test_old_keys_are_mapped_only_for_old_schemas():
    payload = {"schema_version": 1, "values": {"quantizer": "hqq", "hqq_keep_output_head": False}}
    assert SmashConfig.from_json_dict(payload, device="cpu")["hqq_target_modules"] == with_kept_in_float("all_linear")
    payload = {"schema_version": 1, "values": {"quantizer": "gptq", "gptq_output_head": "keep"}}
    cfg = SmashConfig.from_json_dict(payload, device="cpu")
    assert cfg["gptq_target_modules"] == with_kept_in_float("all_but_output_head")
    assert cfg["gptq_output_head_precision"] == "weight_bits"
