"""Structured pruning, LoRA recovery and depth distillation on SmolLM2-135M, in one run, on a CPU.

    python benchmarks/structured.py                       # every row, the default budgets
    python benchmarks/structured.py --lora-steps 200 --distill-steps 150 --markdown docs/structured_results.md

Training text: PydocTopics' train split (Python's own documentation topics). Perplexity on two texts never
trained on: PydocTopics' test split (the same kind: other documentation topics) and the Debian licence
texts in /usr/share/common-licenses (another kind: legal prose). Each model is measured in this one process;
speed is the ratio to the dense model measured in alternating rounds (prefill: 1 x 128 tokens; decode:
greedy tokens per second for 32 new tokens), so machine load hits both sides alike.

Rows: dense; torch_structured at 25% and 50% of the MLP + attention parameters (activation importance);
25% + lora_recoverer; depth_distiller keeping 20 and 15 of the 30 layers, untrained (plain truncation) and
after training. The recoverer's and distiller's perplexity curves (PydocTopics test) are recorded every
``--curve-every`` steps.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

LICENCES = Path("/usr/share/common-licenses")
WINDOW = 256
PROMPT_TOKENS = 128
NEW_TOKENS = 32


def licence_texts() -> list[str]:
    return [path.read_text(encoding="utf-8", errors="replace") for path in sorted(LICENCES.iterdir()) if path.is_file()]


@torch.no_grad()
def perplexity(model: Any, windows: list[dict[str, torch.Tensor]]) -> float:
    total, count = 0.0, 0
    for batch in windows:
        logits = model(**batch).logits.float()
        ids = batch["input_ids"]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
        total += loss.item()
        count += ids[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def timings(model: Any, prompt: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) for one round."""
    started = time.perf_counter()
    model(**prompt)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    out = model.generate(**prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    decode = (out.shape[1] - prompt["input_ids"].shape[1]) / (time.perf_counter() - started - prefill)
    return prefill, decode


def paired_speed(dense: Any, model: Any, prompt: dict[str, torch.Tensor], rounds: int) -> dict[str, float]:
    """Prefill-latency ratio and decode-speed ratio (model / dense), medians over alternating rounds."""
    timings(dense, prompt), timings(model, prompt)  # warm-up
    prefill, decode = [], []
    for _ in range(rounds):
        dense_prefill, dense_decode = timings(dense, prompt)
        model_prefill, model_decode = timings(model, prompt)
        prefill.append(model_prefill / dense_prefill)
        decode.append(model_decode / dense_decode)
    return {"prefill_vs_dense": statistics.median(prefill), "decode_vs_dense": statistics.median(decode)}


def parameters(model: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora-steps", type=int, default=200)
    parser.add_argument("--distill-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora-learning-rate", type=float, default=5e-4)
    parser.add_argument("--distill-learning-rate", type=float, default=1e-4)
    parser.add_argument("--sequence-length", type=int, default=256, choices=[128, 256, 512])
    parser.add_argument("--eval-windows", type=int, default=24, help=f"windows of {WINDOW} tokens per evaluation text")
    parser.add_argument("--curve-every", type=int, default=50)
    parser.add_argument("--speed-rounds", type=int, default=3)
    parser.add_argument("--rows", help="comma-separated subset of: pruned, lora, distill")
    parser.add_argument("--markdown")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows_wanted = set((args.rows or "pruned,lora,distill").split(","))

    from smashlib import SmashConfig, smash
    from smashlib.bundled import load_smollm2
    from smashlib.data import calibration_batches, pack_texts
    from smashlib.training import watch_training

    dense, tokenizer = load_smollm2()
    dense.eval()
    holder = SmashConfig(device="cpu")
    holder.add_tokenizer(tokenizer)
    holder.add_data("PydocTopics")
    pydoc_test = calibration_batches(holder.components, args.eval_windows, WINDOW, batch_size=4, split="test")
    licences = pack_texts(licence_texts(), tokenizer, WINDOW, n_samples=args.eval_windows, batch_size=4)
    curve_windows = pydoc_test[: max(1, len(pydoc_test) // 3)]
    prompt = {k: v[:1, :PROMPT_TOKENS] for k, v in pydoc_test[0].items()}
    load = os.getloadavg()[0]
    conditions = {
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "eval_windows": args.eval_windows,
        "window_tokens": WINDOW,
        "batch_size": args.batch_size,
        "sequence_length": args.sequence_length,
        "lora_steps": args.lora_steps, "lora_learning_rate": args.lora_learning_rate,
        "distill_steps": args.distill_steps, "distill_learning_rate": args.distill_learning_rate,
    }

    def measure(label: str, model: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        row = {
            "variant": label,
            "parameters_M": parameters(model) / 1e6,
            "ppl_pydoc_test": perplexity(model, pydoc_test),
            "ppl_licences": perplexity(model, licences),
            **(paired_speed(dense, model, prompt, args.speed_rounds) if model is not dense else
               {"prefill_vs_dense": 1.0, "decode_vs_dense": 1.0}),
            **(extra or {}),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
        write()
        return row

    def write() -> None:  # after every row, so a run cut short still leaves what it measured
        conditions["load_average_at_end"] = os.getloadavg()[0]
        report = {"conditions": conditions, "rows": rows, "curves": curves}
        if args.markdown:
            Path(args.markdown).write_text(markdown(report) + "\n", encoding="utf-8")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    def smashed(values: dict[str, Any]) -> tuple[Any, list, float]:
        model, _ = load_smollm2()
        cfg = SmashConfig(values, device="cpu")
        cfg.add_tokenizer(tokenizer)
        cfg.add_data("PydocTopics")
        started = time.perf_counter()
        with watch_training(lambda m: perplexity(m, curve_windows), args.curve_every) as logs:
            result = smash(model, cfg, verbose=True)
        return result.model.eval(), logs, time.perf_counter() - started

    rows: list[dict[str, Any]] = []
    curves: dict[str, list] = {}
    measure("dense (SmolLM2-135M fp32)", dense)
    pruning = {"pruner": "torch_structured", "torch_structured_target": "both"}
    if "pruned" in rows_wanted:
        for sparsity in (0.25, 0.5):
            model, _, seconds = smashed({**pruning, "torch_structured_sparsity": sparsity})
            measure(f"torch_structured {sparsity:.0%}", model, {"smash_s": seconds})
            del model
    if "lora" in rows_wanted:
        model, logs, seconds = smashed({
            **pruning, "torch_structured_sparsity": 0.25, "recoverer": "lora_recoverer",
            "lora_recoverer_steps": args.lora_steps, "lora_recoverer_batch_size": args.batch_size,
            "lora_recoverer_sequence_length": args.sequence_length, "lora_recoverer_learning_rate": args.lora_learning_rate,
        })
        label = f"torch_structured 25% + lora_recoverer ({args.lora_steps} steps)"
        curves[label] = logs[0].evaluations
        measure(label, model, {"smash_s": seconds, "train_s": logs[0].seconds})
        del model
    if "distill" in rows_wanted:
        for keep in (20, 15):
            for steps in (0, args.distill_steps):
                model, logs, seconds = smashed({
                    "distiller": "depth_distiller", "depth_distiller_keep_layers": keep,
                    "depth_distiller_steps": steps, "depth_distiller_batch_size": args.batch_size,
                    "depth_distiller_sequence_length": args.sequence_length,
                    "depth_distiller_learning_rate": args.distill_learning_rate,
                })
                label = f"depth_distiller {keep}/30 layers, " + (f"{steps} steps" if steps else "untrained")
                extra = {"smash_s": seconds}
                if steps:
                    curves[label] = logs[0].evaluations
                    extra["train_s"] = logs[0].seconds
                measure(label, model, extra)
                del model
    write()
    print(markdown({"conditions": conditions, "rows": rows, "curves": curves}))
    return 0


def markdown(report: dict[str, Any]) -> str:
    c = report["conditions"]
    lines = [
        (f"Measured in one run with {c['torch_threads']} torch threads "
        f"(load average {c['load_average_at_start']:.1f} at start, {c.get('load_average_at_end', 0):.1f} at end); "
        f"perplexity on {c['eval_windows']} windows of {c['window_tokens']} tokens per text; speed as the median "
        "ratio to the dense model over alternating rounds."),
        "",
        ("| variant | parameters (M) | ppl PydocTopics test | ppl Debian licences | prefill time vs dense "
        "| decode tokens/s vs dense | smash time (s) |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['variant']} | {r['parameters_M']:.1f} | {r['ppl_pydoc_test']:.2f} | {r['ppl_licences']:.2f} | "
            f"{r['prefill_vs_dense']:.2f}x | {r['decode_vs_dense']:.2f}x | {r.get('smash_s', 0):.0f} |"
        )
    for label, points in report["curves"].items():
        lines += ["", f"Perplexity (a third of the PydocTopics test windows) against steps, {label}:", ""]
        lines.append("| step | " + " | ".join(str(step) for step, _ in points) + " |")
        lines.append("|---" * (len(points) + 1) + "|")
        lines.append("| perplexity | " + " | ".join(f"{value:.2f}" for _, value in points) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
