"""torch_compile_target='aot_decode': generate's decoding step compiled ahead of time (smashlib.aot_decode).

The compiled step must give the eager model's tokens and logits, take every one-token step of a generate
call that fits its cache (counted), leave every other call to the model's own forward, be found again in
the cache folder after a reload instead of being rebuilt, and be refused up front where it cannot work.
"""
from __future__ import annotations

import copy
import warnings
import zipfile

import pytest
import torch

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.aot_decode.cache import PreallocatedCache, allocate_buffers
from smashlib.aot_decode.kernel_views import exposed_kernel_tensors, kernel_constants
from smashlib.aot_decode.runtime import compiled_decoding
from smashlib.errors import UnsupportedDeviceError, UnsupportedModelError
from smashlib.layers.packed_int import PackedLinear
from tests.tiny_models import build_tiny, tiny_tokenizer

CAPACITY = 48
NEW_TOKENS = 10
#: family -> the quantizer settings it is compiled after (8-bit and 4-bit kernels, and none at all)
RECIPES = {
    "llama": {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1},
    "qwen3": {"quantizer": "gptq", "gptq_weight_bits": 4, "gptq_group_size": 32},
    "qwen2": {},
}
AOT = {"compiler": "torch_compile", "torch_compile_target": "aot_decode", "torch_compile_max_cache_len": CAPACITY}
FAST = {"gptq_calibration_samples": 8, "gptq_sequence_length": 128}


def config(recipe: dict, **extra) -> SmashConfig:
    values = {**recipe, **(FAST if recipe.get("quantizer") == "gptq" else {}), **extra}
    cfg = SmashConfig(values, device="cpu")
    if recipe.get("quantizer") == "gptq":
        cfg.add_tokenizer(tiny_tokenizer())
        cfg.add_data("PydocTopics")
    return cfg


def greedy(model, ids: torch.Tensor, new_tokens: int = NEW_TOKENS):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits)


def counting_steps(model) -> list[int]:
    """Wrap the compiled step's call so a test can count it."""
    decoding = compiled_decoding(model)
    calls, step = [], decoding.logits
    decoding.logits = lambda ids: (calls.append(1), step(ids))[1]
    return calls


@pytest.fixture(scope="module", params=sorted(RECIPES))
def smashed_pair(request):
    """(the family, its eager smashed model, the same recipe with the compiled step, saved and reloaded)."""
    family = request.param
    torch.manual_seed(0)
    base = build_tiny(family)
    eager = smash(copy.deepcopy(base), config(RECIPES[family]), verbose=False) if RECIPES[family] else base
    compiled = smash(copy.deepcopy(base), config(RECIPES[family], **AOT), verbose=False)
    return family, eager, compiled


def prompt(length: int = 9) -> torch.Tensor:
    return torch.randint(3, 256, (1, length), generator=torch.Generator().manual_seed(1))


def test_the_compiled_step_gives_the_eager_tokens_and_logits(smashed_pair):
    _, eager, compiled = smashed_pair
    expected_tokens, expected_logits = greedy(eager, prompt())
    calls = counting_steps(compiled.model)
    tokens, step_logits = greedy(compiled, prompt())
    assert torch.equal(tokens, expected_tokens)
    torch.testing.assert_close(step_logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert len(calls) == NEW_TOKENS - 1  # every step after prefill ran the library


def test_a_reload_finds_the_compiled_step_instead_of_building_it(smashed_pair, tmp_path):
    _, eager, compiled = smashed_pair
    compiled.save_pretrained(tmp_path / "saved")
    reloaded = SmashedModel.from_pretrained(tmp_path / "saved")
    decoding = compiled_decoding(reloaded.model)
    assert decoding is not None and not decoding.built
    assert decoding.package == compiled_decoding(compiled.model).package
    assert torch.equal(greedy(reloaded, prompt())[0], greedy(eager, prompt())[0])


def test_calls_that_do_not_fit_the_cache_run_the_models_own_forward(smashed_pair):
    _, eager, compiled = smashed_pair
    calls = counting_steps(compiled.model)
    batch = torch.cat([prompt(), prompt()])
    assert torch.equal(greedy(compiled, batch)[0], greedy(eager, batch)[0])  # two sequences
    too_long = prompt(CAPACITY - 4)
    assert torch.equal(greedy(compiled, too_long)[0], greedy(eager, too_long)[0])  # past the capacity
    with torch.no_grad():
        plain = compiled(input_ids=prompt()).logits  # a plain forward call
        beams = {"num_beams": 2, "max_new_tokens": 4, "do_sample": False}
        assert torch.equal(compiled.generate(prompt(), **beams), eager.generate(prompt(), **beams))  # beam search
    torch.testing.assert_close(plain, eager(input_ids=prompt()).logits, rtol=1e-4, atol=1e-4)
    assert calls == []


def test_a_generate_while_another_holds_the_cache_runs_eagerly(smashed_pair):
    _, eager, compiled = smashed_pair
    decoding = compiled_decoding(compiled.model)
    calls = counting_steps(compiled.model)
    with decoding.lock:  # as a generate in another thread holds it
        assert torch.equal(greedy(compiled, prompt())[0], greedy(eager, prompt())[0])
    assert calls == []


def test_the_library_calls_the_kernels_as_c_functions(smashed_pair):
    """Not through AOTInductor's proxy executor, which boxes every call's arguments (int8_vnni_kernel.c_shims)."""
    from smashlib.layers import int8_vnni_kernel

    family, _, compiled = smashed_pair
    if int8_vnni_kernel.unavailable_reason() is not None:
        pytest.skip(f"the mat-vec kernel {int8_vnni_kernel.unavailable_reason()}")
    with zipfile.ZipFile(compiled_decoding(compiled.model).package) as package:
        wrapper = "".join(package.read(name).decode() for name in package.namelist() if name.endswith(".wrapper.cpp"))
    calls = {op: wrapper.count(f"AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_{op}(") for op in int8_vnni_kernel.C_SHIMS}
    bits = RECIPES[family].get("gptq_weight_bits")
    layers = sum(isinstance(m, PackedLinear) for m in compiled.model.modules())
    assert calls == {"int8_vnni_matvec": layers if bits == 8 else 0, "int4_matvec": layers if bits == 4 else 0}
    assert "aoti_torch_proxy_executor_call_function(" not in wrapper


def test_the_preallocated_cache_attends_like_a_dynamic_cache():
    """Eager: prefill then one-token steps on the preallocated buffers give the logits of a fresh forward."""
    model = build_tiny("llama").eval()
    ids = prompt(12)
    cache = PreallocatedCache(allocate_buffers(model, 16))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :9], cache=cache, use_cache=True).logits
        steps = [model(input_ids=ids[:, i:i + 1], cache=cache, use_cache=True).logits for i in range(9, 12)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), expected, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 12
    with pytest.raises(ValueError, match="holds 16 tokens"):
        model(input_ids=prompt(5), cache=cache, use_cache=True)


def test_kernel_tensors_are_named_only_while_exporting():
    smashed = smash(build_tiny("llama"), config(RECIPES["llama"]), verbose=False)
    layers = [m for m in smashed.model.modules() if isinstance(m, PackedLinear)]
    kernels = [layer.kernel for layer in layers]
    buffers = [dict(layer.named_buffers()) for layer in layers]
    names = kernel_constants(smashed.model)
    assert names and all(".layers." in n or "lm_head" in n for n in names)
    with exposed_kernel_tensors(smashed.model):
        exposed = dict(smashed.model.named_buffers())
        assert all(exposed[name] is tensor for name, tensor in names.items())
    assert [layer.kernel for layer in layers] == kernels
    assert [dict(layer.named_buffers()) for layer in layers] == buffers


def test_a_model_with_sliding_window_layers_is_refused_before_it_is_touched():
    model = build_tiny("gemma3")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        smash(model, config({"quantizer": "half"}, **AOT), verbose=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_another_backend_is_refused():
    with pytest.raises(UnsupportedDeviceError, match="aot_decode"):
        smash(build_tiny("llama"), config({}, **AOT, torch_compile_backend="eager"), verbose=False)


def test_a_model_changed_after_compiling_decodes_eagerly_and_says_so():
    smashed = smash(build_tiny("llama"), config(RECIPES["llama"], **AOT), verbose=False)
    expected = greedy(smashed, prompt())[0]
    calls = counting_steps(smashed.model)
    smashed.model.to(torch.float32)  # moving or casting builds the packed layers' kernels again
    with pytest.warns(UserWarning, match="generate runs eagerly"):
        tokens = smashed.model.generate(prompt(), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(tokens, expected) and calls == []
