"""4-bit GPTQ on SmolLM2-135M with and without LoRA recovery: perplexity on three kinds of text.

The protocol of benchmarks/cpu_recipe.py (its texts, windows and splits): calibration and training on one kind
of text (the licences) or on the LocalTexts mix (``--data LocalTexts``), perplexity on the evaluation licences,
Python's pydoc topics and Vim's user manual, each recipe beside plain GPTQ on the same data in the same run.

    .venv/bin/python benchmarks/gptq_lora_recovery.py                     # 20-50 minutes on 2 cores
    .venv/bin/python benchmarks/gptq_lora_recovery.py --data LocalTexts --steps 64 --rank 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="licences", choices=["licences", "LocalTexts"])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    import cpu_recipe
    import torch

    from smashlib import SmashConfig, smash
    from smashlib.bundled import load_smollm2

    model, tokenizer = load_smollm2()
    windows = cpu_recipe.evaluation_windows(tokenizer)

    def perplexities(candidate) -> dict[str, float]:
        def logits_of(ids):
            with torch.no_grad():
                return candidate(input_ids=torch.tensor([ids])).logits[0]

        return {kind: cpu_recipe.perplexity_from(logits_of, w) for kind, w in windows.items()}

    base = perplexities(model)
    recovery = {"recoverer": "lora_recoverer", "lora_recoverer_rank": args.rank, "lora_recoverer_alpha": 2.0 * args.rank,
                "lora_recoverer_steps": args.steps, "lora_recoverer_learning_rate": args.learning_rate}
    results = {"fp32": base}
    for label, extra in [("gptq 4-bit g32", {}), ("gptq 4-bit g32 + LoRA recovery", recovery)]:
        config = SmashConfig({"quantizer": "gptq", **extra}, device="cpu")
        config.add_tokenizer(tokenizer)
        config.add_data("LocalTexts" if args.data == "LocalTexts" else cpu_recipe.calibration_texts())
        started = time.perf_counter()
        smashed = smash(load_smollm2()[0], config, verbose=False)
        found = perplexities(smashed)
        results[label] = {**{kind: round(100 * (value / base[kind] - 1), 1) for kind, value in found.items()},
                          "smash_s": round(time.perf_counter() - started)}
        print(label, f"(calibrated on {args.data}):", results[label], "(% perplexity against fp32)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
