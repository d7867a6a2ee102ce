"""Run tune() on the bundled SmolLM2-135M and write the trials, the front and the chosen recipe.

    python benchmarks/tune_smollm2.py --budget 15m --out tune-run/       # docs/tune.md's real run

The reference is the best hand-picked recipe of docs/benchmarks.md within 1% perplexity (gptq 8-bit per
channel + torch_compile): it is measured like any trial, never chosen, and the summary says whether the
recipe tune() found decodes at least as fast.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REFERENCE = {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1, "compiler": "torch_compile"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--max-quality-drop", type=float, default=0.01)
    parser.add_argument("--out", default="tune-run")
    parser.add_argument("--trial-time-limit", default=None, help="one trial's slot (default: half the budget)")
    parser.add_argument("--no-reference", action="store_true", help="do not measure the hand-picked recipe")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from smashlib.bundled import load_smollm2
    from smashlib.tuning import tune

    model, tokenizer = load_smollm2()
    load_before = os.getloadavg()[0]
    started = time.time()
    result = tune(model, tokenizer=tokenizer, data="PydocTopics", objective="decode_tokens_per_s",
                  max_quality_drop=args.max_quality_drop, budget=args.budget, seed=0, log=out / "trials.jsonl",
                  reference=[] if args.no_reference else [REFERENCE], trial_time_limit=args.trial_time_limit)
    took = time.time() - started
    conditions = (f"budget {args.budget}, took {took / 60:.1f} min; load average {load_before:.1f} at the start, "
                  f"{os.getloadavg()[0]:.1f} at the end (2 cores, shared); OMP_WAIT_POLICY="
                  f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    (out / "trials.md").write_text(f"{conditions}\n\n{result.table(markdown=True)}\n", encoding="utf-8")
    result.to_json(out / "trials.json")
    try:
        result.plot_pareto(out / "pareto.png")
    except Exception as error:  # noqa: BLE001 - the plot is optional (matplotlib)
        print(f"no plot: {error}")
    print(conditions)
    print(result.table())
    print("front:", [t["trial"] for t in result.pareto()])


if __name__ == "__main__":
    main()
