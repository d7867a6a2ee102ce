"""dynamic_batcher: concurrent callers batched, each with its unbatched result; bad input fails its caller alone."""
from __future__ import annotations

import threading

import pytest
import torch
import transformers

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.errors import InvalidInputError, MissingComponentError, UnsupportedModelError
from smashlib.serving.attach import batcher_of
from smashlib.serving.batch_queue import BatchQueue
from tests.tiny_models import build_tiny, tiny_tokenizer

LENGTHS = (5, 9, 3, 12, 7, 6)


def lively_llama() -> torch.nn.Module:
    """A tiny llama with large random weights: greedy decoding wanders over many tokens instead of repeating
    one, so a wrongly padded or mixed-up row shows up as different tokens."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=128, initializer_range=0.3, eos_token_id=None, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).eval()


def prompts(lengths=LENGTHS) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(3, 256, (1, n), generator=generator) for n in lengths]


def batched(model, wait_ms=300, size=8, tokenizer=None) -> SmashedModel:
    cfg = SmashConfig(device="cpu")
    cfg["batcher"] = "dynamic_batcher"
    cfg["dynamic_batcher_max_wait_ms"] = wait_ms
    cfg["dynamic_batcher_max_batch_size"] = size
    if tokenizer is not None:
        cfg.add_tokenizer(tokenizer)
    return smash(model, cfg, verbose=False)


def in_threads(function, count):
    results: list = [None] * count

    def run(index):
        try:
            results[index] = function(index)
        except Exception as error:  # noqa: BLE001 - the test looks at each caller's outcome
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_generate_matches_unbatched_greedy():
    model = lively_llama()
    inputs = prompts()
    reference = [model.generate(p, max_new_tokens=12, do_sample=False) for p in inputs]
    assert len({int(t) for r in reference for t in r[0, -12:]}) > 10  # the test can see a mixed-up row
    smashed = batched(model)
    results = in_threads(lambda i: smashed.generate(inputs[i], max_new_tokens=12, do_sample=False), len(inputs))
    for got, want in zip(results, reference):
        assert torch.equal(got, want)
    sizes = batcher_of(smashed.model).generate_queue.batch_sizes
    assert max(sizes) > 1 and sum(sizes) == len(inputs)


def test_rows_stop_at_their_own_end_of_sequence_token():
    model = lively_llama()
    inputs = prompts()
    free = model.generate(inputs[1], max_new_tokens=12, do_sample=False)
    model.generation_config.eos_token_id = int(free[0, inputs[1].shape[1] + 3])  # row 1 ends after 4 tokens
    reference = [model.generate(p, max_new_tokens=12, do_sample=False) for p in inputs]
    assert reference[1].shape[1] == inputs[1].shape[1] + 4
    smashed = batched(model)
    results = in_threads(lambda i: smashed.generate(inputs[i], max_new_tokens=12, do_sample=False), len(inputs))
    for got, want in zip(results, reference):
        assert torch.equal(got, want)


def test_max_batch_size_bounds_every_batch():
    model = lively_llama()
    smashed = batched(model, wait_ms=200, size=2)
    inputs = prompts()
    in_threads(lambda i: smashed.generate(inputs[i], max_new_tokens=2, do_sample=False), len(inputs))
    assert max(batcher_of(smashed.model).generate_queue.batch_sizes) <= 2


def test_a_list_of_prompts_returns_each_text_in_order():
    tokenizer = tiny_tokenizer()
    model = lively_llama()
    texts = ["The return statement", "for", "Names and binding of variables in a block"]
    reference = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
        reference.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    smashed = batched(model, wait_ms=0, tokenizer=tokenizer)
    assert smashed.generate(texts, max_new_tokens=6, do_sample=False) == reference
    assert smashed.generate(texts[0], max_new_tokens=6, do_sample=False) == reference[0]
    assert batcher_of(smashed.model).generate_queue.batch_sizes[0] == 3  # one list: one batch


def test_a_callers_bad_input_fails_that_caller_alone():
    model = lively_llama()
    inputs = prompts()
    reference = [model.generate(p, max_new_tokens=4, do_sample=False) for p in inputs]
    inputs[2] = torch.tensor([[5, 999, 7]])  # outside the 256-token vocabulary
    smashed = batched(model)
    results = in_threads(lambda i: smashed.generate(inputs[i], max_new_tokens=4, do_sample=False), len(inputs))
    assert isinstance(results[2], InvalidInputError) and "vocabulary" in str(results[2])
    for index, (got, want) in enumerate(zip(results, reference)):
        if index != 2:
            assert torch.equal(got, want)
    with pytest.raises(InvalidInputError, match="attention_mask"):
        smashed.generate(inputs[0], attention_mask=torch.ones(1, 2), max_new_tokens=2)
    with pytest.raises(MissingComponentError, match="add_tokenizer"):
        smashed.generate("text needs a tokenizer")


def test_a_batch_that_fails_is_rerun_so_only_the_culprit_fails():
    def run(key, payloads):
        if "bad" in payloads:
            raise RuntimeError("bad payload")
        return [p.upper() for p in payloads]

    queue = BatchQueue(run, max_batch_size=4, max_wait_ms=300)
    futures = [queue.submit("k", payload) for payload in ("a", "bad", "c")]
    assert futures[0].result() == "A" and futures[2].result() == "C"
    with pytest.raises(RuntimeError, match="bad payload"):
        futures[1].result()
    assert queue.batch_sizes[0] == 3  # they did share a batch first


def test_concurrent_forward_passes_match_unbatched():
    model = lively_llama()
    inputs = prompts()
    with torch.no_grad():
        reference = [model(input_ids=p).logits for p in inputs]
    smashed = batched(model)
    results = in_threads(lambda i: smashed(input_ids=inputs[i]).logits, len(inputs))
    for got, want in zip(results, reference):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert max(batcher_of(smashed.model).forward_queue.batch_sizes) > 1


def test_forward_of_an_encoder_classifier_ignores_the_padding():
    model = build_tiny("bert")
    inputs = prompts((4, 10, 7))
    with torch.no_grad():
        reference = [model(input_ids=p).logits for p in inputs]
    smashed = batched(model)
    results = in_threads(lambda i: smashed(input_ids=inputs[i]).logits, len(inputs))
    for got, want in zip(results, reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_whisper_is_refused_with_the_batcher_it_needs():
    cfg = SmashConfig(device="cpu")
    cfg["batcher"] = "dynamic_batcher"
    with pytest.raises(UnsupportedModelError, match="input_ids.*ifw"):
        smash(build_tiny("whisper"), cfg, verbose=False)


def test_saved_model_gets_a_batcher_with_its_tokenizer_again(tmp_path):
    tokenizer = tiny_tokenizer()
    model = lively_llama()
    ids = tokenizer("The return statement", return_tensors="pt")["input_ids"]
    want = tokenizer.decode(model.generate(ids, max_new_tokens=5, do_sample=False)[0, ids.shape[1]:],
                            skip_special_tokens=True)
    batched(model, wait_ms=0, tokenizer=tokenizer).save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert batcher_of(loaded.model) is not None
    assert loaded.generate(["The return statement"], max_new_tokens=5, do_sample=False) == [want]
