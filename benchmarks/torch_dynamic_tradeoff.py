"""The speed/quality trade-off of torch_dynamic's settings on SmolLM2-135M: the table in docs/torch_dynamic.md.

Every variant is smashed from the same fp32 model and measured in one process, interleaved with the
fp32 (and bf16) baselines by smashlib.evaluation, so machine drift hits all alike:

- perplexity on real text never used for calibration (PydocTopics test split, windows of 256 tokens;
  SmoothQuant calibrates on the train split) and its ratio to fp32;
- prefill latency, batch 1 x 128 tokens (p50), and its speed-up over fp32;
- greedy decode tokens/s (from a 128-token prompt) and its speed-up over fp32;
- bytes of the weights in memory (int8 values count one byte; tied weights once).

    python benchmarks/torch_dynamic_tradeoff.py [--samples 16] [--runs 10] [--new-tokens 32]
        [--only fp32,none+sq,...] [--threads 2] [--markdown out.md]

The lead reruns it alone on the machine for the final numbers; on shared cores timings are rough.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from smashlib.module_swap import KEEP_FULL_PRECISION_TO_TARGETS

#: label -> SmashConfig values. "fp32" (no algorithm) is the reference of every ratio.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16 (half)": {"quantizer": "half", "half_dtype": "bfloat16"},
}
#: labels keep the names of the layers left in fp32 (the docs' table); the values are target_modules presets
for _keep, _targets in KEEP_FULL_PRECISION_TO_TARGETS.items():
    VARIANTS[_keep] = {"quantizer": "torch_dynamic", "torch_dynamic_target_modules": _targets}
    VARIANTS[f"{_keep} + smoothquant"] = {
        "quantizer": "torch_dynamic", "torch_dynamic_target_modules": _targets, "torch_dynamic_smoothquant": True,
    }

DATASET = "PydocTopics"
EVAL_SEQ_LEN = 256
PROMPT_TOKENS = 128
COLUMNS = (
    ("perplexity", "perplexity", "ppl / fp32", "lower"),
    ("latency_p50_ms", "prefill 1x128 ms", "prefill speed-up", "lower"),
    ("decode_tokens_per_s", "decode tok/s", "decode speed-up", "higher"),
    ("weights_bytes", "weights MB", "bytes / fp32", "lower"),
)


def smash_variant(model: Any, tokenizer: Any, values: dict[str, Any]) -> tuple[Any, float]:
    """(smashed copy of ``model``, seconds smash took) for one variant's SmashConfig values."""
    from smashlib import SmashConfig, smash

    config = SmashConfig(values, device="cpu")
    config.add_tokenizer(tokenizer)
    if any("data" in a.required_components(config.settings_for(a)) for a in config.chosen_algorithms()):
        config.add_data(DATASET)  # calibration reads the train split; perplexity below reads the test split
    start = time.perf_counter()
    smashed = smash(copy.deepcopy(model), config, verbose=False)
    return smashed, time.perf_counter() - start


def weights_bytes(model: Any) -> int:
    from smashlib.evaluation.metrics.size import weight_footprint

    return weight_footprint(model)[0]


def measure(models: dict[str, Any], tokenizer: Any, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Perplexity on the test split, then prefill latency and decode speed on one 128-token prompt."""
    from smashlib import SmashConfig
    from smashlib.data import calibration_batches
    from smashlib.evaluation import evaluate_models
    from smashlib.evaluation.metrics.generation import Generation
    from smashlib.evaluation.metrics.quality import Perplexity
    from smashlib.evaluation.metrics.timing import Latency

    config = SmashConfig(device="cpu")
    config.add_tokenizer(tokenizer)
    config.add_data(DATASET)
    text = calibration_batches(config.components, n_samples=args.samples, seq_len=EVAL_SEQ_LEN, batch_size=4, split="test")
    prompt = [{k: v[:1, :PROMPT_TOKENS] for k, v in text[0].items()}]
    quality = evaluate_models(models, data=text, metrics=[Perplexity()], verbose=not args.quiet)
    speed = evaluate_models(
        models, data=prompt,
        metrics=[Latency(runs=args.runs, warmup=2), Generation(new_tokens=args.new_tokens, runs=3, warmup=1)],
        threads=args.threads, verbose=not args.quiet,
    )
    return {
        label: {**quality.values[label], **speed.values[label], "weights_bytes": weights_bytes(model)}
        for label, model in models.items()
    }


def table(values: dict[str, dict[str, float]], smash_seconds: dict[str, float]) -> str:
    """A markdown table: absolute values and ratios to fp32 (speed-ups > 1 are faster)."""
    reference = values["fp32"]
    headers = ["variant", *(h for _, h, _, _ in COLUMNS), *(r for _, _, r, _ in COLUMNS), "smash s"]
    rows = []
    for label, row in values.items():
        absolute, ratios = [], []
        for key, _, _, better in COLUMNS:
            value, base = row.get(key), reference.get(key)
            scale = 1e6 if key == "weights_bytes" else 1
            absolute.append("-" if value is None else f"{value / scale:.4g}")
            if value is None or not base:
                ratios.append("-")
            elif key in ("latency_p50_ms",):
                ratios.append(f"{base / value:.2f}x")
            elif key == "decode_tokens_per_s":
                ratios.append(f"{value / base:.2f}x")
            else:
                ratios.append(f"{value / base:.3f}")
        rows.append([label, *absolute, *ratios, f"{smash_seconds.get(label, 0):.0f}"])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=16, help="test sequences of 256 tokens for perplexity")
    parser.add_argument("--runs", type=int, default=10, help="timed prefill runs per variant")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per decode run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads while timing (default: torch's)")
    parser.add_argument("--only", default="", help="comma-separated variant labels (fp32 is always measured)")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from smashlib.bundled import load_smollm2
    from smashlib.evaluation import machine_info

    chosen = {"fp32"} | {label.strip() for label in args.only.split(",") if label.strip()} if args.only else set(VARIANTS)
    unknown = chosen - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    model, tokenizer = load_smollm2()
    models: dict[str, Any] = {}
    smash_seconds: dict[str, float] = {}
    with torch.inference_mode(False), torch.no_grad():
        for label, values in VARIANTS.items():
            if label not in chosen:
                continue
            if values:
                models[label], smash_seconds[label] = smash_variant(model, tokenizer, values)
            else:
                models[label] = model
            if not args.quiet:
                print(f"smashed {label} in {smash_seconds.get(label, 0):.0f} s", file=sys.stderr, flush=True)
    values = measure(models, tokenizer, args)
    result = table(values, smash_seconds)
    machine = machine_info({"cpu"})
    header = (
        f"SmolLM2-135M-Instruct on {machine['cpu']} ({machine['cpu_cores']} cores, {machine['torch_threads']} torch "
        f"threads), torch {machine['torch']}; perplexity on {args.samples} x {EVAL_SEQ_LEN} tokens of {DATASET} (test split)"
    )
    print(header)
    print(result)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(header + "\n\n" + result + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
