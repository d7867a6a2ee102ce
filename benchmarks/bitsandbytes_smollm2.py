"""Measure smashlib's bitsandbytes quantizers (llm_int8, bnb_4bit) on SmolLM2-135M against fp32 and bf16.

Prints one table: bytes of the saved weights, perplexity on pydoc_data text, prefill latency
(batch 1 x 128 tokens) and greedy decode speed (KV cache, one token per step), each recipe next to the fp32 and bf16 baselines
measured in the same run. Timings are interleaved round by round and take the best round, which holds
up best on shared cores; still, treat them as rough there (run it on an idle machine for numbers to quote).

    python benchmarks/bitsandbytes_smollm2.py [--texts 16] [--new-tokens 32] [--rounds 3]
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from smashlib import SmashConfig, smash
from smashlib.bundled import load_smollm2

RECIPES: dict[str, dict] = {
    "fp32": {},
    "bf16 (half)": {"quantizer": "half"},
    "llm_int8 threshold 6": {"quantizer": "llm_int8"},
    "llm_int8 threshold 0": {"quantizer": "llm_int8", "llm_int8_outlier_threshold": 0.0},
    "bnb_4bit nf4 bf16": {"quantizer": "bnb_4bit"},
    "bnb_4bit nf4 fp32": {"quantizer": "bnb_4bit", "bnb_4bit_compute_dtype": "float32"},
    "bnb_4bit fp4 bf16": {"quantizer": "bnb_4bit", "bnb_4bit_quant_type": "fp4"},
    "bnb_4bit nf4 block 32": {"quantizer": "bnb_4bit", "bnb_4bit_blocksize": 32},
}


def pydoc_token_batches(tokenizer, count: int, length: int) -> list[torch.Tensor]:
    from pydoc_data.topics import topics

    texts = [text for _, text in sorted(topics.items()) if len(text) > 2000][:count]
    return [tokenizer(text, return_tensors="pt", truncation=True, max_length=length)["input_ids"] for text in texts]


@torch.inference_mode()
def perplexity(model, batches: list[torch.Tensor]) -> float:
    total, tokens = 0.0, 0
    for ids in batches:
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
        tokens += ids.shape[1] - 1
    return math.exp(total / tokens)


@torch.inference_mode()
def prefill_seconds(model, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=ids)
    return time.perf_counter() - start


@torch.inference_mode()
def decode_tokens_per_second(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Greedy decoding with the KV cache, step by step: the median step is robust to a stray slow one."""
    out = model(input_ids=ids, use_cache=True)
    steps = []
    for _ in range(new_tokens):
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
        steps.append(time.perf_counter() - start)
    return 1.0 / statistics.median(steps)


def saved_bytes(smashed) -> int:
    with tempfile.TemporaryDirectory() as folder:
        smashed.save_pretrained(Path(folder) / "m")
        return (Path(folder) / "m" / "model.safetensors").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=16, help="pydoc texts for perplexity (256 tokens each)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed-only", action="store_true", help="skip perplexity (the slow part)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run besides fp32 (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base, tokenizer = load_smollm2()
    batches = pydoc_token_batches(tokenizer, args.texts, 256)
    prompt = torch.cat([b[:, :128] for b in batches if b.shape[1] >= 128][:1])
    decode_prompt = prompt[:, :16]

    chosen = {name: values for name, values in RECIPES.items() if not args.only or name in args.only or name == "fp32"}
    models, rows = {}, {}
    print(f"{'recipe':24} {'weights MB':>10} {'vs fp32':>8} {'perplexity':>10} {'vs fp32':>8}", flush=True)
    for name, values in chosen.items():
        model = smash(copy.deepcopy(base), SmashConfig(values, device="cpu"), verbose=False) if values else base
        models[name] = model
        rows[name] = row = {"bytes": saved_bytes(model), "ppl": math.nan if args.speed_only else perplexity(model, batches),
                            "prefill": [], "decode": []}
        fp32 = rows["fp32"]
        print(f"{name:24} {row['bytes'] / 1e6:10.1f} {row['bytes'] / fp32['bytes']:8.2f} {row['ppl']:10.3f} "
              f"{row['ppl'] / fp32['ppl'] - 1:+8.1%}", flush=True)

    # timings interleaved round by round, so that load on shared cores hits every recipe alike;
    # the best round of each is the least disturbed one
    for _ in range(args.rounds):
        for name, model in models.items():
            rows[name]["prefill"].append(prefill_seconds(model, prompt))
            rows[name]["decode"].append(decode_tokens_per_second(model, decode_prompt, args.new_tokens))
    fp32_prefill, fp32_decode = min(rows["fp32"]["prefill"]), max(rows["fp32"]["decode"])
    print(f"\n{'recipe':24} {'prefill ms':>10} {'vs fp32':>8} {'decode tok/s':>12} {'vs fp32':>8}")
    for name, row in rows.items():
        prefill, decode = min(row["prefill"]), max(row["decode"])
        print(f"{name:24} {prefill * 1e3:10.1f} {prefill / fp32_prefill:8.2f} {decode:12.1f} {decode / fp32_decode:8.2f}")
    print(f"threads: {torch.get_num_threads()}; prefill: batch 1 x {prompt.shape[1]} tokens; decode: "
          f"median step of {args.new_tokens} greedy tokens after a {decode_prompt.shape[1]}-token prompt; best of {args.rounds} rounds")


if __name__ == "__main__":
    main()
