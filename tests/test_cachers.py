"""prefix_cache and quantized_kv: same greedy outputs as the uncached model (exact / nearly), less cache
memory, model checks, settings checks, compatibility as data, re-applied at load."""
from __future__ import annotations

import pytest
import torch

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.caches.cache_size import cache_bytes
from smashlib.caches.generate_hook import generate_hook_owner
from smashlib.errors import HyperparameterValueError, UnsupportedModelError
from smashlib.registry import algorithms, incompatible_pair
from tests.test_dynamic_batcher import in_threads, lively_llama
from tests.tiny_models import build_tiny

PREFIX = torch.randint(3, 256, (1, 40), generator=torch.Generator().manual_seed(5))


def with_suffix(length: int, seed: int) -> torch.Tensor:
    return torch.cat([PREFIX, torch.randint(3, 256, (1, length), generator=torch.Generator().manual_seed(seed))], 1)


def cached(model, cacher="prefix_cache", **settings) -> SmashedModel:
    cfg = SmashConfig(device="cpu")
    cfg["cacher"] = cacher
    for key, value in settings.items():
        cfg[f"{cacher}_{key}"] = value
    return smash(model, cfg, verbose=False)


def store_of(smashed):
    return smashed.model.generate.prefix_store


# ---------------------------------------------------------------------------------------------- prefix_cache
def test_prefix_cache_reuses_the_shared_prefix_with_identical_greedy_outputs():
    model = lively_llama()
    prompts = [with_suffix(n, seed) for seed, n in enumerate((6, 3, 9, 1))] + [PREFIX]
    reference = [model.generate(p, max_new_tokens=10, do_sample=False) for p in prompts]
    smashed = cached(model, min_prefix_tokens=16)
    results = [smashed.generate(p, max_new_tokens=10, do_sample=False) for p in prompts]
    for got, want in zip(results, reference):
        assert torch.equal(got, want)
    reused = store_of(smashed).reused
    assert reused[0] == 0 and all(n >= 40 - 1 for n in reused[1:])  # computed once, then reused


def test_prefix_cache_keeps_at_most_max_prefixes_and_ignores_short_matches():
    model = lively_llama()
    smashed = cached(model, max_prefixes=2, min_prefix_tokens=41)
    for seed in range(4):
        smashed.generate(with_suffix(4, seed), max_new_tokens=2, do_sample=False)
    store = store_of(smashed)
    assert len(store) == 2
    assert store.reused == [0, 0, 0, 0]  # the 40 shared tokens are fewer than min_prefix_tokens


def test_prefix_cache_leaves_padded_batches_and_beam_search_unchanged():
    model = lively_llama()
    batch = torch.cat([with_suffix(4, 1), with_suffix(4, 2)])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    want_batch = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False)
    want_beams = model.generate(with_suffix(4, 1), max_new_tokens=5, num_beams=2, do_sample=False)
    smashed = cached(model)
    smashed.generate(with_suffix(4, 3), max_new_tokens=2, do_sample=False)  # fill the store
    assert torch.equal(smashed.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False), want_batch)
    assert torch.equal(smashed.generate(with_suffix(4, 1), max_new_tokens=5, num_beams=2, do_sample=False), want_beams)
    assert store_of(smashed).reused == [0]  # only the first call used the store


@pytest.mark.parametrize("cacher", ["prefix_cache", "quantized_kv"])
def test_kv_cachers_name_what_they_need_on_other_models(cacher):
    with pytest.raises(UnsupportedModelError, match="decoder-only causal language model.*encoder-decoder"):
        cached(build_tiny("t5"), cacher)
    with pytest.raises(UnsupportedModelError, match="decoder-only causal language model.*BertForSequence"):
        cached(build_tiny("bert"), cacher)


def test_prefix_cache_is_applied_again_at_load(tmp_path):
    model = lively_llama()
    prompts = [with_suffix(5, 1), with_suffix(2, 2)]
    reference = [model.generate(p, max_new_tokens=6, do_sample=False) for p in prompts]
    cached(model).save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert generate_hook_owner(loaded.model) == "prefix_cache"
    assert [torch.equal(loaded.generate(p, max_new_tokens=6, do_sample=False), w) for p, w in zip(prompts, reference)] \
        == [True, True]
    assert store_of(loaded).reused[1] >= 40


def test_prefix_cache_with_the_batcher_gives_each_caller_its_result():
    model = lively_llama()
    prompts = [with_suffix(n, seed) for seed, n in enumerate((6, 3, 9))]
    reference = [model.generate(p, max_new_tokens=6, do_sample=False) for p in prompts]
    cfg = SmashConfig(device="cpu")
    cfg["cacher"] = "prefix_cache"
    cfg["batcher"] = "dynamic_batcher"
    smashed = smash(model, cfg, verbose=False)
    results = in_threads(lambda i: smashed.generate(prompts[i], max_new_tokens=6, do_sample=False), len(prompts))
    assert all(torch.equal(got, want) for got, want in zip(results, reference))


# ---------------------------------------------------------------------------------------------- quantized_kv
def _cache_of(output):
    return output["cache"] if "cache" in output else output["past_key_values"]


@pytest.mark.parametrize(("bits", "backend", "largest_ratio", "largest_error"), [
    (8, "hqq", 0.5, 0.05), (4, "hqq", 0.35, 0.5), (4, "quanto", 0.35, 0.5),
])
def test_quantized_kv_holds_a_smaller_cache_close_to_the_full_one(bits, backend, largest_ratio, largest_error):
    model = lively_llama()
    prompt = with_suffix(40, 1)  # 80 tokens, so most of the cache is quantized (residual_length 8)
    settings = {"max_new_tokens": 16, "do_sample": False, "return_dict_in_generate": True, "output_logits": True}
    plain = model.generate(prompt, **settings)
    smashed = cached(model, "quantized_kv", bits=bits, backend=backend, residual_length=8, group_size=32)
    assert generate_hook_owner(smashed.model) == "quantized_kv"
    out = smashed.generate(prompt, **settings)
    assert type(_cache_of(out)).__name__ == "QuantizedCache"
    ratio = cache_bytes(_cache_of(out)) / cache_bytes(_cache_of(plain))
    assert 0.05 < ratio < largest_ratio, ratio  # 8 bits: about a third of fp32 (with scales), 4 bits less
    # the second token is the first computed from the dequantized cache, with the same input token
    error = float((out.logits[1] - plain.logits[1]).norm() / plain.logits[1].norm())
    assert 0 < error < largest_error, error
    if bits == 8:  # this random model amplifies any change (real agreement: benchmarks/serving.py on SmolLM2)
        assert torch.equal(out.sequences[0, 80:84], plain.sequences[0, 80:84])


def test_quantized_kv_settings_are_checked_before_the_model_is_touched():
    model = lively_llama()
    with pytest.raises(HyperparameterValueError, match="quanto.*4.*quantized_kv_backend"):
        cached(model, "quantized_kv", bits=8, backend="quanto")
    assert generate_hook_owner(model) is None


def test_quantized_kv_is_applied_again_at_load(tmp_path):
    model = lively_llama()
    prompt = with_suffix(10, 4)
    smashed = cached(model, "quantized_kv", bits=8, residual_length=4, group_size=32)
    want = smashed.generate(prompt, max_new_tokens=8, do_sample=False)
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert generate_hook_owner(loaded.model) == "quantized_kv"
    assert torch.equal(loaded.generate(prompt, max_new_tokens=8, do_sample=False), want)


# ---------------------------------------------------------------------------------------------- compatibility
def test_compatibility_is_declared_as_data():
    names = algorithms()
    assert {"prefix_cache", "quantized_kv", "dynamic_batcher"} <= set(names)
    # one cacher per group: the two caches cannot be chosen together, by construction
    assert names["prefix_cache"].group == names["quantized_kv"].group == "cacher"
    cfg = SmashConfig()
    cfg["cacher"] = "prefix_cache"
    cfg["cacher"] = "quantized_kv"
    assert cfg["cacher"] == "quantized_kv" and "prefix_cache_max_prefixes" not in cfg.to_dict()
    for cacher in ("prefix_cache", "quantized_kv"):
        for other in ("torch_compile", "dynamic_batcher", "half", "torch_dynamic"):
            assert not incompatible_pair(cacher, other)


def test_batched_callers_share_one_quantized_cache_batch():
    model = lively_llama()
    prompts = [with_suffix(n, seed) for seed, n in enumerate((6, 3, 9))]
    cfg = SmashConfig(device="cpu")
    cfg["cacher"] = "quantized_kv"
    cfg["quantized_kv_bits"] = 8
    cfg["batcher"] = "dynamic_batcher"
    cfg["dynamic_batcher_max_wait_ms"] = 300
    smashed = smash(model, cfg, verbose=False)
    results = in_threads(lambda i: smashed.generate(prompts[i], max_new_tokens=6, do_sample=False), len(prompts))
    for got, prompt in zip(results, prompts):
        assert got.shape == (1, prompt.shape[1] + 6) and torch.equal(got[:, : prompt.shape[1]], prompt)
