"""GPTQ's quality / size / speed front on SmolLM2-135M, next to round-to-nearest on the same grid.

    python benchmarks/gptq_tradeoff.py                                   # every variant below
    python benchmarks/gptq_tradeoff.py --variants "fp32,rtn 4-bit g128,gptq 4-bit g128"
    python benchmarks/gptq_tradeoff.py --markdown docs/gptq_tradeoff.md --json gptq.json

One process, one table. Per variant: the time quantization took, the weights' bytes (the state dict,
which is what save_pretrained writes: packed integers, bf16 scales, packed zeros), perplexity on the
PydocTopics test split (windows of 512 tokens from topics never used for calibration), prefill
latency (batch 1 x 128 tokens) and greedy decode speed (64 new tokens). Speed is measured with
smashlib.evaluation, which interleaves the models' timed rounds so machine drift hits all alike.

Round-to-nearest ("rtn") uses exactly GPTQ's grid, packing and kernels (``gptq_method="rtn"``), so
the gap between the two rows is the solver's alone. Timings on shared cores are rough; perplexity and
sizes are exact.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: label -> how the variant is made: None (fp32) or a SmashConfig dict (smash). GPTQ variants take the
#: algorithm's defaults unless they say otherwise; gptq_method="rtn" rounds to nearest on the same grid.
VARIANTS: dict[str, Any] = {
    "fp32": None,
    "bf16": {"quantizer": "half"},
    "rtn 4-bit g32": {"quantizer": "gptq", "gptq_method": "rtn"},
    "gptq 4-bit g32": {"quantizer": "gptq"},
    "gptq 4-bit g32, no act-order": {"quantizer": "gptq", "gptq_desc_act": False},
    "gptq 4-bit g32, head int8": {"quantizer": "gptq", "gptq_output_head_precision": "int8"},
    "gptq 4-bit g32, head kept": {"quantizer": "gptq", "gptq_target_modules": "all_but_output_head"},
    "rtn 4-bit g128": {"quantizer": "gptq", "gptq_method": "rtn", "gptq_group_size": 128},
    "gptq 4-bit g64": {"quantizer": "gptq", "gptq_group_size": 64},
    "gptq 4-bit g128": {"quantizer": "gptq", "gptq_group_size": 128},
    "rtn 3-bit g32": {"quantizer": "gptq", "gptq_method": "rtn", "gptq_weight_bits": 3},
    "gptq 3-bit g32": {"quantizer": "gptq", "gptq_weight_bits": 3},
    "gptq 8-bit per-channel": {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1},
}
DATASET = "PydocTopics"
PROMPT_TOKENS = 128
NEW_TOKENS = 64
WINDOW = 512


def make_variant(recipe: Any, tokenizer: Any, args: argparse.Namespace) -> Any:
    """The model of one variant, freshly loaded from the fp32 weights."""
    from smashlib import SmashConfig, smash
    from smashlib.bundled import load_smollm2

    model, _ = load_smollm2()
    if recipe is None:
        return model
    values = dict(recipe)
    if values.get("quantizer") == "gptq" and values.get("gptq_method") != "rtn":
        if args.calibration_samples:
            values["gptq_calibration_samples"] = args.calibration_samples
        if args.sequence_length:
            values["gptq_sequence_length"] = args.sequence_length
    config = SmashConfig(values, device="cpu")
    needs = {component for _, component in config.missing_components()}
    if "tokenizer" in needs:
        config.add_tokenizer(tokenizer)
    if "data" in needs:
        config.add_data(DATASET)
    return smash(model, config, verbose=not args.quiet)


def weight_bytes(model: Any) -> int:
    """Bytes of the state dict, a storage shared by two names (tied embeddings) counted once."""
    from smashlib.evaluation.metrics.size import weight_footprint

    return weight_footprint(model)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", help="comma-separated labels (default: all): " + ", ".join(VARIANTS))
    parser.add_argument("--calibration-samples", type=int, help="gptq_calibration_samples (default: the algorithm's)")
    parser.add_argument("--sequence-length", type=int, help="gptq_sequence_length (default: the algorithm's)")
    parser.add_argument("--eval-windows", type=int, default=16, help=f"test windows of {WINDOW} tokens for perplexity")
    parser.add_argument("--prompts", type=int, default=2, help="prompts timed for latency and decode")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads while measuring (default: torch's)")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--json", help="also write the full report as JSON")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from smashlib import SmashConfig
    from smashlib.bundled import smollm2_path
    from smashlib.data import calibration_batches
    from smashlib.evaluation import evaluate_models
    from smashlib.evaluation.metrics.generation import Generation
    from smashlib.evaluation.metrics.quality import Perplexity
    from smashlib.evaluation.metrics.timing import Latency

    labels = [label.strip() for label in args.variants.split(",")] if args.variants else list(VARIANTS)
    unknown = [label for label in labels if label not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    holder = SmashConfig(device="cpu")
    holder.add_tokenizer(tokenizer)
    holder.add_data(DATASET)
    windows = calibration_batches(holder.components, args.eval_windows, WINDOW, batch_size=1, split="test")

    models: dict[str, Any] = {}
    extra: dict[str, dict[str, float]] = {}
    for label in labels:
        started = time.perf_counter()
        models[label] = make_variant(VARIANTS[label], tokenizer, args)
        extra[label] = {"quantize_s": time.perf_counter() - started, "weights_mb": weight_bytes(models[label]) / 1e6}
        if not args.quiet:
            print(f"{label}: made in {extra[label]['quantize_s']:.0f} s, {extra[label]['weights_mb']:.1f} MB", file=sys.stderr)

    quality = evaluate_models(models, data=windows, metrics=[Perplexity()], verbose=not args.quiet)
    speed = evaluate_models(
        models, data=DATASET, tokenizer=tokenizer, tokenizer_kwargs={"max_length": PROMPT_TOKENS, "truncation": True},
        max_samples=args.prompts, threads=args.threads, verbose=not args.quiet,
        metrics=[Latency(runs=args.latency_runs, warmup=2), Generation(new_tokens=NEW_TOKENS, runs=2, warmup=1)],
    )
    reference = labels[0]
    rows = []
    for label in labels:
        ppl = quality.value("perplexity", label)
        row = {
            "variant": label,
            "weights MB": extra[label]["weights_mb"],
            "vs first": extra[label]["weights_mb"] / extra[reference]["weights_mb"],
            "perplexity": ppl,
            "ppl vs first": ppl / quality.value("perplexity", reference) if ppl else None,
            "prefill ms": speed.value("latency_p50_ms", label),
            "decode tok/s": speed.value("decode_tokens_per_s", label),
            "quantize s": extra[label]["quantize_s"],
        }
        rows.append(row)
    table = markdown_table(rows)
    print(table)
    print(f"\nmachine: {speed.machine}", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    if args.json:
        payload = {"rows": rows, "quality": quality.to_dict(), "speed": speed.to_dict(), "argv": sys.argv[1:]}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    return 0


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}" if value < 10 else f"{value:.1f}"
        return str(value)

    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
