"""`smashlib tune MODEL --max-quality-drop 0.01 --budget 15m --out DIR`: registered by smashlib.cli.

Kept here, beside tune(), so the main command-line module only calls :func:`add_tune_command`.
DIR receives the best model (DIR/best), the trials as markdown and JSON, the JSON-lines log that a
rerun with the same --out resumes from, and the Pareto plot when matplotlib is installed.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smashlib.tuning.objectives import OBJECTIVES, QUALITIES


def add_tune_command(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the `tune` subcommand to smashlib's subparsers (``common`` adds --quiet and --json)."""
    parser = commands.add_parser(
        "tune", help="search for the fastest recipe within a quality bound (SMAC3)",
        description="Search MODEL's SmashConfig space with SMAC3 for the recipe best on --objective whose "
        "quality drops by at most --max-quality-drop; save the best model and the table of trials to --out.",
    )
    parser.add_argument("model", metavar="MODEL_DIR_OR_ID")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the best model, trials and plot")
    parser.add_argument("--max-quality-drop", type=float, default=0.01, help="e.g. 0.01: 1%% (default)")
    parser.add_argument("--budget", default="15m", help="time for the whole search, e.g. 3m, 15m, 1h (default 15m)")
    parser.add_argument("--objective", choices=list(OBJECTIVES), default="decode_tokens_per_s")
    parser.add_argument("--quality", choices=list(QUALITIES), default="perplexity")
    parser.add_argument("--data", default="PydocTopics", metavar="NAME", help="calibrates on train, measures on test")
    parser.add_argument("--include", metavar="A,B,...", help="algorithms or groups to search (default: all)")
    parser.add_argument("--exclude", metavar="A,B,...", help="algorithms or groups not to search")
    parser.add_argument("--max-trials", type=int, help="stop after this many new trials")
    parser.add_argument("--trial-time-limit", metavar="DURATION", help="time slot of one trial (default: budget/2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"])
    common(parser)
    parser.set_defaults(handler=cmd_tune)


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def cmd_tune(args: argparse.Namespace) -> int:
    from smashlib.cli import (
        CommandError,
        _emit,
        _prepare_transformers,
        _say,
        load_plain_model,
        load_tokenizer,
        resolve_model_path,
    )
    from smashlib.errors import MissingPackageError
    from smashlib.tuning import tune

    _prepare_transformers(args.quiet)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    if tokenizer is None:
        raise CommandError(f"cannot load a tokenizer from {path}: tune measures on text and needs one.")
    _say(args, f"loading {path}")
    model = load_plain_model(path, args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = tune(
        model, tokenizer=tokenizer, data=args.data, objective=args.objective, quality=args.quality,
        max_quality_drop=args.max_quality_drop, budget=args.budget, seed=args.seed, include=_names(args.include),
        exclude=_names(args.exclude), device=args.device, log=str(out / "trials.jsonl"), max_trials=args.max_trials,
        trial_time_limit=args.trial_time_limit, verbose=not args.quiet,
    )
    (out / "trials.md").write_text(result.table(markdown=True) + "\n", encoding="utf-8")
    result.to_json(out / "trials.json")
    payload: dict[str, Any] = {"model": path, "trials": len(result.trials), "summary": result.summary(),
                               "files": ["trials.md", "trials.json", "trials.jsonl"]}
    try:
        result.plot_pareto(out / "pareto.png")
        payload["files"].append("pareto.png")
    except MissingPackageError as error:
        _say(args, f"no Pareto plot: {error}")
    best = result.best_model
    if best is not None:
        payload["best"] = result.best_trial["config"]
        payload["saved_to"] = str(best.save_pretrained(out / "best"))
    _emit(args, payload, result.table() + (f"\nbest model saved to {payload['saved_to']}" if best is not None else ""))
    return 0
