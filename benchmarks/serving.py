"""Serving algorithms on SmolLM2-135M: the tables in docs/dynamic_batcher.md, prefix_cache.md, quantized_kv.md.

Every ratio is measured in one process, the variants interleaved, so machine drift hits them alike:

- dynamic_batcher: greedy sequences per second (``--new-tokens`` each, prompts from PydocTopics) for 1
  caller and for ``--callers`` concurrent callers through the same batcher; the speed-up of the second
  over the first, and how many sequences equal the unbatched model's;
- prefix_cache: time to first token (generate with max_new_tokens=1) of prompts sharing a
  ``--prefix-tokens`` prefix (a licence text) with different questions, with and without the cache
  (median over ``--runs`` interleaved pairs), and whether 16 greedy tokens are identical;
- quantized_kv: bytes the KV cache holds after ``--context`` tokens of context plus ``--kv-new-tokens``
  greedy tokens, for fp32 and each quantized setting, and the greedy agreement with fp32.

    python benchmarks/serving.py [--only batcher,prefix,kv] [--threads 2] [--callers 8] [--markdown out.md]

On shared cores timings are rough: the header prints the load average next to the numbers.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LICENCES = Path("/usr/share/common-licenses")
QUESTIONS = [
    "Question: who may use this work? Answer:",
    "Question: what must a copy include? Answer:",
    "Question: is there a warranty? Answer:",
    "Question: can I sell copies? Answer:",
    "Question: what is a derivative work? Answer:",
    "Question: who holds the copyright? Answer:",
]
#: (label, quantized_kv settings) measured against the fp32 DynamicCache
KV_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("8-bit hqq", {"quantized_kv_bits": 8, "quantized_kv_backend": "hqq"}),
    ("4-bit hqq", {"quantized_kv_bits": 4, "quantized_kv_backend": "hqq"}),
    ("4-bit quanto", {"quantized_kv_bits": 4, "quantized_kv_backend": "quanto"}),
]


def smashed_copy(model: Any, tokenizer: Any, values: dict[str, Any]) -> Any:
    from smashlib import SmashConfig, smash

    config = SmashConfig(values, device="cpu")
    config.add_tokenizer(tokenizer)
    return smash(copy.deepcopy(model), config, verbose=False)


def licence_tokens(tokenizer: Any, count: int) -> Any:
    """``count`` token ids of real English text: the Debian licence texts, joined."""
    import torch

    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(LICENCES.glob("*")) if p.is_file())
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :count]
    if ids.shape[1] < count:
        raise SystemExit(f"only {ids.shape[1]} tokens of licence text in {LICENCES}; lower --context")
    return ids.to(torch.long)


# ---------------------------------------------------------------------------------------------- batcher
def batcher_prompts(tokenizer: Any, count: int) -> list[Any]:
    from pydoc_data.topics import topics

    texts = [text for _, text in sorted(topics.items()) if len(text) > 400][:count]
    lengths = [24 + (index * 7) % 41 for index in range(count)]  # 24..64 tokens: real padding in every batch
    return [tokenizer(text, return_tensors="pt")["input_ids"][:, :n] for text, n in zip(texts, lengths)]


def run_callers(smashed: Any, prompts: list[Any], callers: int, new_tokens: int) -> tuple[float, list[Any]]:
    """(seconds, outputs) for ``callers`` threads sharing ``prompts`` round-robin, each calling generate."""
    outputs: list[Any] = [None] * len(prompts)

    def caller(first: int) -> None:
        for index in range(first, len(prompts), callers):
            outputs[index] = smashed.generate(prompts[index], max_new_tokens=new_tokens, do_sample=False)

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, outputs


def bench_batcher(model: Any, tokenizer: Any, args: argparse.Namespace) -> list[str]:
    import torch

    prompts = batcher_prompts(tokenizer, args.sequences)
    reference = [model.generate(p, max_new_tokens=args.new_tokens, do_sample=False) for p in prompts]
    smashed = smashed_copy(model, tokenizer, {
        "batcher": "dynamic_batcher", "dynamic_batcher_max_batch_size": args.callers,
        "dynamic_batcher_max_wait_ms": args.max_wait_ms,
    })
    run_callers(smashed, prompts[:2], 1, 2)  # warm-up
    rows = []
    timings: dict[int, list[float]] = {1: [], args.callers: []}
    same: dict[int, int] = {}
    for _ in range(args.rounds):  # interleaved rounds: 1 caller, then many
        for callers in (1, args.callers):
            seconds, outputs = run_callers(smashed, prompts, callers, args.new_tokens)
            timings[callers].append(seconds)
            same[callers] = sum(torch.equal(o, r) for o, r in zip(outputs, reference))
    one = statistics.median(timings[1])
    many = statistics.median(timings[args.callers])
    rows.append("| callers | sequences/s | speed-up | sequences equal to unbatched greedy |")
    rows.append("|---|---|---|---|")
    rows.append(f"| 1 | {len(prompts) / one:.2f} | 1.00x | {same[1]}/{len(prompts)} |")
    rows.append(
        f"| {args.callers} | {len(prompts) / many:.2f} | {one / many:.2f}x | {same[args.callers]}/{len(prompts)} |"
    )
    return rows


# ---------------------------------------------------------------------------------------------- prefix cache
def bench_prefix(model: Any, tokenizer: Any, args: argparse.Namespace) -> list[str]:
    import torch

    prefix = licence_tokens(tokenizer, args.prefix_tokens)
    prompts = [torch.cat([prefix, tokenizer(q, return_tensors="pt")["input_ids"]], dim=1) for q in QUESTIONS]
    cached = smashed_copy(model, tokenizer, {"cacher": "prefix_cache"})
    cached.generate(prompts[0], max_new_tokens=1, do_sample=False)  # the prefix is computed once, here
    model.generate(prompts[0], max_new_tokens=1, do_sample=False)  # warm-up of the plain path
    plain_times, cached_times = [], []
    for run in range(args.runs):
        prompt = prompts[1 + run % (len(prompts) - 1)]
        for target, times in ((model, plain_times), (cached, cached_times)):
            start = time.perf_counter()
            target.generate(prompt, max_new_tokens=1, do_sample=False)
            times.append(time.perf_counter() - start)
    identical = all(
        torch.equal(model.generate(p, max_new_tokens=16, do_sample=False),
                    cached.generate(p, max_new_tokens=16, do_sample=False))
        for p in prompts[1:3]
    )
    plain, fast = statistics.median(plain_times), statistics.median(cached_times)
    return [
        f"| prompt | time to first token (median of {args.runs}) | speed-up | 16 greedy tokens identical |",
        "|---|---|---|---|",
        f"| {args.prefix_tokens}-token shared prefix + question, no cache | {plain * 1000:.0f} ms | 1.00x | |",
        f"| same, `prefix_cache` | {fast * 1000:.0f} ms | {plain / fast:.2f}x | {'yes' if identical else 'NO'} |",
    ]


# ---------------------------------------------------------------------------------------------- quantized KV
def bench_kv(model: Any, tokenizer: Any, args: argparse.Namespace) -> list[str]:
    from smashlib.caches.cache_size import cache_bytes

    context = licence_tokens(tokenizer, args.context)
    settings = {"max_new_tokens": args.kv_new_tokens, "do_sample": False, "return_dict_in_generate": True}

    def run(target: Any) -> tuple[Any, int, float]:
        start = time.perf_counter()
        out = target.generate(context, **settings)
        seconds = time.perf_counter() - start
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        return out.sequences[0, args.context:], cache_bytes(cache), seconds

    plain_tokens, plain_bytes, plain_seconds = run(model)
    rows = [
        (f"| KV cache | bytes held at {args.context}+{args.kv_new_tokens} tokens | / fp32 | greedy tokens equal "
        f"to fp32's | first difference at token | generate time / fp32 |"),
        "|---|---|---|---|---|---|",
        (f"| fp32 (DynamicCache) | {plain_bytes / 2**20:.1f} MiB | 1.00 | {args.kv_new_tokens}/{args.kv_new_tokens} "
        "| - | 1.00 |"),
    ]
    chosen = [part.strip() for part in args.kv_variants.split(",")] if args.kv_variants else None
    for label, values in KV_SETTINGS:
        if chosen is not None and label not in chosen:
            continue
        smashed = smashed_copy(model, tokenizer, {"cacher": "quantized_kv", **values})
        tokens, held, seconds = run(smashed)
        equal = int((tokens == plain_tokens).sum())
        differs = (tokens != plain_tokens).nonzero()
        first = str(int(differs[0]) + 1) if len(differs) else "-"
        rows.append(
            f"| {label} (residual 128, group 64) | {held / 2**20:.1f} MiB | {held / plain_bytes:.2f} | "
            f"{equal}/{args.kv_new_tokens} | {first} | {seconds / plain_seconds:.2f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="batcher,prefix,kv", help="comma-separated: batcher, prefix, kv")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--sequences", type=int, default=16, help="prompts per batcher round")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per batcher sequence")
    parser.add_argument("--max-wait-ms", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved batcher rounds (median)")
    parser.add_argument("--prefix-tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=6, help="time-to-first-token pairs (median)")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--kv-new-tokens", type=int, default=32)
    parser.add_argument("--kv-variants", help=f"comma-separated, among: {', '.join(k for k, _ in KV_SETTINGS)}")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args(argv)

    import torch

    from smashlib.bundled import load_smollm2

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2()
    load = os.getloadavg()
    lines = [
        (f"SmolLM2-135M-Instruct, fp32, CPU, {args.threads} torch threads; measured while the machine was shared "
        f"(load average {load[0]:.1f} at the start)."),
        "",
    ]
    sections = {"batcher": ("dynamic_batcher", bench_batcher), "prefix": ("prefix_cache", bench_prefix),
                "kv": ("quantized_kv", bench_kv)}
    for key in args.only.split(","):
        title, bench = sections[key.strip()]
        start = time.perf_counter()
        rows = bench(model, tokenizer, args)
        lines += [f"### {title}", "", *rows, "", (f"({time.perf_counter() - start:.0f} s, load average at the end "
                  f"{os.getloadavg()[0]:.1f})"), ""]
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
