"""Benchmark every quantizer recipe on SmolLM2-135M against fp32 and bf16, measured in the same run.

One table: weights on disk, prefill latency (batch 1 x 128 tokens, p50), greedy decode speed (64 new
tokens), peak memory and perplexity on real text (PydocTopics test split: Python's own help pages),
each with its ratio to fp32. Every number comes from smashlib.evaluation (no metric code here).

How each recipe is measured, and why:
1. a "smash" process loads fp32 SmolLM2, smashes it with the recipe and saves it (save_pretrained) to
   a temporary folder: the size on disk is the saved folder's, compressed tensors as they are;
2. a fresh "measure" process loads that folder (SmashedModel.from_pretrained: no fp32 copy, no
   re-quantization) and evaluates it. Its peak RSS, above what the interpreter held after importing
   torch and transformers, is the peak memory column: loading plus running, nothing else.
   Without save/load, one process smashes and measures, and the memory column is the evaluation
   API's (weights in memory + the forward pass's peak).
With ``--rounds N`` the measure processes run N times, round-robin over the recipes in alternating
order, and each timing is the median of its rounds: machine drift then hits every recipe alike.

    python benchmarks/quantizers.py [--markdown docs/benchmarks.md] [--rounds 3] [--only fp32,bf16,...]

Recipes whose algorithm is not registered, whose package is missing, or whose hyperparameters this
smashlib does not have are skipped with the reason printed. Timings on shared cores are rough.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: (label, SmashConfig values). The first is the reference of every ratio. Edit freely: a recipe whose
#: algorithm or hyperparameter is unknown here is skipped with the reason.
COMPILE = {"compiler": "torch_compile"}
#: 8 bits: one scale per output channel (-1), which PyTorch's int8 weight-only kernel runs as stored.
GPTQ_8BIT = {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1}
#: 4 bits: gptq's defaults (groups of 32, act-order, output head 4-bit too).
GPTQ_4BIT = {"quantizer": "gptq", "gptq_weight_bits": 4, "gptq_group_size": 32}
RECIPES: list[tuple[str, dict[str, Any]]] = [
    ("fp32", {}),
    ("bf16", {"quantizer": "half", "half_dtype": "bfloat16"}),
    ("fp32 + torch_compile", COMPILE),
    ("bf16 + torch_compile", {"quantizer": "half", "half_dtype": "bfloat16", **COMPILE}),
    ("torch_dynamic int8", {"quantizer": "torch_dynamic"}),
    ("torch_dynamic int8 + smoothquant", {"quantizer": "torch_dynamic", "torch_dynamic_target_modules": "all_linear",
                                          "torch_dynamic_smoothquant": True}),
    ("torchao int8wo", {"quantizer": "torchao", "torchao_quant_type": "int8wo"}),
    ("torchao int8dq", {"quantizer": "torchao", "torchao_quant_type": "int8dq"}),
    ("hqq 8-bit", {"quantizer": "hqq", "hqq_weight_bits": 8}),
    ("hqq 4-bit g64", {"quantizer": "hqq", "hqq_weight_bits": 4, "hqq_group_size": 64}),
    ("quanto qint8", {"quantizer": "quanto", "quanto_weights": "qint8"}),
    ("quanto qint4", {"quantizer": "quanto", "quanto_weights": "qint4"}),
    ("llm_int8", {"quantizer": "llm_int8"}),
    ("bnb_4bit nf4", {"quantizer": "bnb_4bit", "bnb_4bit_quant_type": "nf4"}),
    ("gptq 8-bit", GPTQ_8BIT),
    ("gptq 8-bit + torch_compile", {**GPTQ_8BIT, **COMPILE}),
    ("round-to-nearest 4-bit g32", {**GPTQ_4BIT, "gptq_method": "rtn"}),
    ("gptq 4-bit g32", GPTQ_4BIT),
    ("gptq 4-bit g32 + torch_compile", {**GPTQ_4BIT, **COMPILE}),
]

#: The table's columns: report keys, in order.
COLUMNS = ("disk_weights_mb", "latency_p50_ms", "decode_tokens_per_s", "peak_memory_mb", "perplexity")
PROMPT_TOKENS = 128
NEW_TOKENS = 64
DATASET = "PydocTopics"
PROCESS_PEAK = "process_peak_mb"
#: Everything after this line of the Markdown file is hand-written analysis, kept when the table is rewritten.
HAND_WRITTEN = "<!-- hand-written below: kept when the table above is regenerated -->"


# ====================================================================== recipes
def recipe_config(recipe: dict[str, Any], tokenizer: Any = None) -> Any:
    """The SmashConfig of a recipe, with the components its algorithms require attached (calibration
    data from the train split: the perplexity is measured on the test split, never seen in calibration)."""
    from smashlib import SmashConfig

    config = SmashConfig(recipe, device="cpu")
    needs = {component for _, component in config.missing_components()}
    if "tokenizer" in needs and tokenizer is not None:
        config.add_tokenizer(tokenizer)
    if "data" in needs:
        config.add_data(DATASET)
    return config


def skip_reason(recipe: dict[str, Any]) -> str | None:
    """Why a recipe cannot run here (unknown algorithm or hyperparameter, missing package), else None."""
    from smashlib import SmashError

    try:
        recipe_config(recipe)
    except SmashError as error:
        return str(error)
    return None


def save_load_available() -> bool:
    from smashlib import SmashedModel

    return "save_pretrained" in vars(SmashedModel) and "from_pretrained" in vars(SmashedModel)


# ====================================================================== worker processes
def _rss_now_mb() -> float:
    from smashlib.evaluation.metrics.memory import current_rss

    return current_rss() / 1e6


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kilobytes on Linux


def _metrics(folder: str | None, model: Any, with_memory: bool, args: argparse.Namespace) -> list[Any]:
    from smashlib.evaluation.metrics.generation import Generation
    from smashlib.evaluation.metrics.memory import Memory
    from smashlib.evaluation.metrics.quality import Perplexity
    from smashlib.evaluation.metrics.size import DiskSize
    from smashlib.evaluation.metrics.timing import Latency

    metrics = [
        DiskSize(folders={model: folder} if folder else None),
        Latency(runs=args.latency_runs, warmup=2),
        Generation(new_tokens=args.new_tokens, runs=3, warmup=1),
        Perplexity(),
    ]
    return metrics + ([Memory()] if with_memory else [])


def worker_smash(label: str, recipe: dict[str, Any], folder: str) -> None:
    """Load fp32 SmolLM2, smash it with ``recipe`` and save it to ``folder``."""
    from smashlib import smash
    from smashlib.bundled import load_smollm2

    model, tokenizer = load_smollm2()
    smashed = smash(model, recipe_config(recipe, tokenizer), verbose=False)
    smashed.save_pretrained(folder)


def worker_measure(label: str, recipe: dict[str, Any], folder: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate one recipe; returns the report as a dict. ``folder``: load the saved model from it
    (fresh process: honest peak memory); None: load fp32 and smash in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401

    from smashlib import smash
    from smashlib.bundled import load_smollm2, smollm2_path
    from smashlib.evaluation import evaluate
    from smashlib.evaluation.metrics.base import Quantity

    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = _rss_now_mb()  # after the imports: the interpreter's share is not the model's

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    if folder is None:
        model, _ = load_smollm2()
        model = smash(model, recipe_config(recipe, tokenizer), verbose=False) if recipe else model
        folder_for_size = str(smollm2_path()) if not recipe else None
    elif not recipe:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        folder_for_size = folder
    else:
        from smashlib import SmashedModel

        model = SmashedModel.from_pretrained(folder, device="cpu")
        folder_for_size = folder
    report = evaluate(
        model, data=DATASET, tokenizer=tokenizer, tokenizer_kwargs={"max_length": PROMPT_TOKENS},
        max_samples=args.samples, metrics=_metrics(folder_for_size, model, folder is None, args),
        label=label, verbose=not args.quiet,
    )
    if folder is not None:
        report.quantities.append(Quantity(PROCESS_PEAK, "peak memory (process, load + run)", "MB", True))
        report.values[label][PROCESS_PEAK] = _peak_rss_mb() - baseline
    report.settings["recipe"] = recipe
    return report.to_dict()


# ====================================================================== the driver
def _run(argv: list[str], quiet: bool) -> None:
    """Run a worker; a failure raises with the last lines of its stderr (kept even when quiet)."""
    command = [sys.executable, os.path.abspath(__file__), *argv]
    result = subprocess.run(command, stderr=subprocess.PIPE if quiet else None, text=True, check=False)
    if result.returncode:
        tail = " | ".join((result.stderr or "").strip().splitlines()[-3:])
        raise RuntimeError(f"the {argv[1]} process exited with status {result.returncode}{': ' + tail if tail else ''}")


def _median_report(label: str, rounds: list[dict[str, Any]]) -> Any:
    """One report per recipe: every value the median of its rounds (sizes and perplexity are equal anyway)."""
    from smashlib.evaluation import Report

    report = Report.from_dict(rounds[0])
    for key in list(report.values[label]):
        samples = [r["values"][label].get(key) for r in rounds if r["values"][label].get(key) is not None]
        report.values[label][key] = statistics.median(samples) if samples else None
    report.settings["rounds"] = len(rounds)
    return report


def drive(args: argparse.Namespace) -> int:
    from smashlib.evaluation import Report

    chosen = [(label, recipe) for label, recipe in RECIPES if not args.only or label in args.only]
    runnable: list[tuple[str, dict[str, Any]]] = []
    skipped: dict[str, str] = {}
    for label, recipe in chosen:
        reason = skip_reason(recipe)
        if reason:
            skipped[label] = reason
            print(f"skipped {label}: {reason}", file=sys.stderr)
        else:
            runnable.append((label, recipe))
    if not runnable:
        print("no recipe can run here", file=sys.stderr)
        return 1
    isolated = save_load_available()
    load_before = os.getloadavg()[0]
    workspace = Path(tempfile.mkdtemp(prefix="smashlib-bench-"))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in runnable}
    folders: dict[str, str | None] = {}
    started = time.perf_counter()
    try:
        for index, (label, recipe) in enumerate(runnable):
            if not isolated:
                folders[label] = None
            elif not recipe:
                from smashlib.bundled import smollm2_path

                folders[label] = str(smollm2_path())
            else:
                folders[label] = str(workspace / f"recipe{index}")
                print(f"[{time.perf_counter() - started:6.0f}s] smashing: {label}", file=sys.stderr, flush=True)
                try:
                    _run(["--worker", "smash", "--label", label, "--folder", folders[label]], args.quiet)
                except RuntimeError as error:
                    skipped[label] = f"smashing failed: {error}"
                    print(f"skipped {label}: {skipped[label]}", file=sys.stderr)
        todo = [(label, recipe) for label, recipe in runnable if label not in skipped]
        for round_index in range(args.rounds):
            order = todo if round_index % 2 == 0 else todo[::-1]
            for label, _ in order:
                print(f"[{time.perf_counter() - started:6.0f}s] measuring: {label} (round {round_index + 1}/{args.rounds})",
                      file=sys.stderr, flush=True)
                out = workspace / "result.json"
                argv = ["--worker", "measure", "--label", label, "--result", str(out), "--samples", str(args.samples),
                        "--new-tokens", str(args.new_tokens), "--latency-runs", str(args.latency_runs)]
                argv += ["--folder", folders[label]] if folders[label] else []
                argv += ["--threads", str(args.threads)] if args.threads else []
                argv += ["--quiet"] if args.quiet else []
                try:
                    _run(argv, args.quiet)
                except RuntimeError as error:
                    skipped[label] = f"measuring failed: {error}"
                    print(f"skipped {label}: {skipped[label]}", file=sys.stderr)
                    continue
                results[label].append(json.loads(out.read_text()))
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    reports = [_median_report(label, results[label]) for label, _ in runnable if results[label] and label not in skipped]
    combined = Report.combine(reports)
    columns = [c if c != "peak_memory_mb" or not isolated else PROCESS_PEAK for c in COLUMNS]
    table = combined.select([c for c in columns if c in combined])
    table.skipped = {label: reason for label, reason in skipped.items()}
    table.settings = {
        **combined.settings, "rounds": args.rounds, "seconds": round(time.perf_counter() - started),
        "memory": "process peak RSS of a fresh process loading the saved model and running it, above the "
        "interpreter's RSS after imports" if isolated else "weights in memory + the forward pass's peak (one process)",
        "machine_load": f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        f"(on {os.cpu_count()} cores; above the core count, other processes were competing for them)",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default: threads spin while waiting)"),
    }
    text = table.table(by="model")
    print(text)
    if args.markdown:
        write_markdown(Path(args.markdown), table, runnable, args)
        print(f"\nwritten to {args.markdown}", file=sys.stderr)
    return 0


def write_markdown(path: Path, report: Any, recipes: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    recipe_lines = "\n".join(f"- **{label}**: `{json.dumps(recipe)}`" for label, recipe in recipes)
    text = f"""# Quantizer benchmark: SmolLM2-135M on CPU

Measured by `python benchmarks/quantizers.py --markdown {path} --rounds {args.rounds} --samples {args.samples} --new-tokens {args.new_tokens}`
(the table is generated: re-run the command rather than editing it; the analysis at the end is kept).

- prefill: p50 latency of one forward pass, batch 1 x {PROMPT_TOKENS} tokens; decode: greedy, {args.new_tokens} new tokens
  after that prompt, tokens/s after the first token; perplexity: {args.samples} windows of {PROMPT_TOKENS} tokens of
  {DATASET} (test split); peak memory: {report.settings.get('memory')}.
- ratios in brackets are to fp32; each timing is the median of {args.rounds} round(s).
- while it ran: {report.settings['machine_load']}; OMP_WAIT_POLICY {report.settings['omp_wait_policy']}.

{report.to_markdown(by="model")}

Recipes:

{recipe_lines}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(with_kept_analysis(text, path.read_text(encoding="utf-8") if path.exists() else ""), encoding="utf-8")


def with_kept_analysis(generated: str, previous: str) -> str:
    """The new generated text, followed by the hand-written analysis below :data:`HAND_WRITTEN` in the
    previous file (people write it; regenerating the table must not erase it)."""
    kept = previous.partition(HAND_WRITTEN)[2]
    return f"{generated}\n{HAND_WRITTEN}{kept}" if kept else generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown (e.g. docs/benchmarks.md)")
    parser.add_argument("--rounds", type=int, default=1, help="measure processes per recipe (median of timings)")
    parser.add_argument("--samples", type=int, default=16, help=f"windows of {PROMPT_TOKENS} tokens for perplexity")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help=f"tokens generated per decode run (default {NEW_TOKENS})")
    parser.add_argument("--latency-runs", type=int, default=10, help="timed prefill runs per process (default 10)")
    parser.add_argument("--only", type=lambda text: [part.strip() for part in text.split(",")], help="labels to run, comma-separated")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars from the workers")
    parser.add_argument("--worker", choices=["smash", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is None:
        return drive(args)
    recipe = dict(RECIPES)[args.label]
    if args.worker == "smash":
        worker_smash(args.label, recipe, args.folder)
    else:
        Path(args.result).write_text(json.dumps(worker_measure(args.label, recipe, args.folder, args), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
