"""Half-precision models attend in float32 for decode steps on CPU (smashlib.layers.decode_attention)."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.layers.decode_attention import DECODE_QUERIES, NAME, float32_decode_sdpa
from tests.tiny_models import build_tiny, tiny_inputs


class _Attention(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 1


def test_short_calls_attend_in_float32_and_long_ones_are_left_alone():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = _Attention()
    keys, values = torch.randn(2, 1, 4, 40, 64).bfloat16()
    for queries in (1, DECODE_QUERIES, DECODE_QUERIES + 1, 40):
        query = torch.randn(1, 4, queries, 64).bfloat16()
        mask = torch.zeros(1, 1, queries, 40, dtype=torch.bfloat16)  # an additive float mask, cast with the rest
        got, _ = float32_decode_sdpa(module, query, keys, values, mask, is_causal=False)
        assert got.dtype == torch.bfloat16
        if queries > DECODE_QUERIES:
            assert torch.equal(got, sdpa_attention_forward(module, query, keys, values, mask, is_causal=False)[0])
        else:
            exact, _ = sdpa_attention_forward(module, query.float(), keys.float(), values.float(), mask.float(),
                                              is_causal=False)
            assert torch.equal(got, exact.bfloat16())


def test_half_models_switch_to_it_and_keep_it_after_loading(tmp_path):
    smashed = smash(build_tiny("llama"), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False)
    assert smashed.model.config._attn_implementation == NAME
    ids = tiny_inputs("llama")["input_ids"][:1, :4]
    with torch.no_grad():
        before = smashed.generate(ids, max_new_tokens=4, do_sample=False)
    smashed.save_pretrained(tmp_path / "saved")
    for saved in ("config.json", "smash_config.json"):  # a fresh process (or plain transformers) builds "sdpa"
        assert NAME not in (tmp_path / "saved" / saved).read_text()
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert loaded.model.config._attn_implementation == NAME
    with torch.no_grad():
        assert torch.equal(loaded.generate(ids, max_new_tokens=4, do_sample=False), before)


def test_a_fresh_process_loads_a_half_model_and_switches_it_again(tmp_path):
    smash(build_tiny("llama"), SmashConfig({"quantizer": "half"}, device="cpu"), verbose=False).save_pretrained(tmp_path / "m")
    code = ("import sys; from smashlib import SmashedModel; "
            "print(SmashedModel.from_pretrained(sys.argv[1]).model.config._attn_implementation)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == NAME


def test_float32_models_keep_sdpa():
    smashed = smash(build_tiny("llama"), SmashConfig({"quantizer": "gptq", "gptq_method": "rtn"}, device="cpu"),
                    verbose=False)
    assert smashed.model.config._attn_implementation == "sdpa"
