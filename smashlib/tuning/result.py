"""What tune() returns: every trial, the best recipe within the bound, the front, tables and a plot."""
from __future__ import annotations

import json
import os
from typing import Any

from smashlib.tuning.objectives import SIZE, get_objective, get_quality


def short_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """The groups and the hyperparameters that differ from their defaults: what a person reads."""
    from smashlib.algorithm import GROUP_ORDER
    from smashlib.config import SmashConfig

    defaults = SmashConfig({g: v for g, v in values.items() if g in GROUP_ORDER}, device="cpu").to_dict()
    return {k: v for k, v in values.items() if k in GROUP_ORDER or defaults.get(k) != v}


def recipe_text(values: dict[str, Any]) -> str:
    return json.dumps(short_recipe(values)) if values else "{} (the base model)"


class TuneResult:
    """The outcome of a search. ``best_config`` is the fastest (by the objective) trial within the bound."""

    def __init__(self, trials: list[dict[str, Any]], settings: dict[str, Any], left_out: dict[str, str],
                 smash_again: Any = None, kept_models: dict[int, Any] | None = None, stopped: str = "") -> None:
        self.trials = trials
        self.settings = settings
        self.left_out = left_out  #: algorithms not searched, and why
        self.stopped = stopped  #: why the search ended (budget, max_trials, space exhausted)
        self.objective = get_objective(settings["objective"])
        self.quality = get_quality(settings["quality"])
        self._smash_again = smash_again
        self._kept = kept_models or {}
        self._best_model: Any = None

    # ------------------------------------------------------------------ the answer
    def feasible(self) -> list[dict[str, Any]]:
        """Trials that were measured and met the quality bound, best objective first."""
        ok = [t for t in self.trials if t["status"] == "ok" and not t.get("reference")]
        return sorted(ok, key=lambda t: t["costs"][self.objective.name])

    @property
    def best_trial(self) -> dict[str, Any] | None:
        ranked = self.feasible()
        return ranked[0] if ranked else None

    @property
    def best_config(self) -> Any:
        """The best recipe as a SmashConfig (None when no trial met the bound)."""
        from smashlib.config import SmashConfig

        best = self.best_trial
        return SmashConfig(best["config"], device=self.settings["device"]) if best else None

    @property
    def best_model(self) -> Any:
        """The best recipe's smashed model: kept from its trial when it ran here, else smashed again."""
        best = self.best_trial
        if best is None:
            return None
        if self._best_model is None:
            kept = self._kept.get(best["trial"])
            self._best_model = kept if kept is not None else self._smash_again(best["config"])
        return self._best_model

    def speedup(self, trial: dict[str, Any], objective: Any = None) -> float | None:
        objective = objective or self.objective
        cost = trial.get("costs", {}).get(objective.name) if trial["status"] in ("ok", "rejected") else None
        return None if cost is None else 1.0 / cost

    # ------------------------------------------------------------------ the front
    def pareto(self) -> list[dict[str, Any]]:
        """Timed trials no other timed trial beats on objective, size and quality drop at once (recipes
        rejected on quality are not timed, so the front holds recipes within the bound)."""
        measured = [t for t in self.trials if self.speedup(t) is not None and not t.get("reference")]

        def point(t: dict[str, Any]) -> tuple[float, float, float]:
            return (t["costs"][self.objective.name], t["costs"][SIZE.name], t["quality_drop"])

        def dominates(a: tuple, b: tuple) -> bool:
            return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

        front = [t for t in measured if not any(dominates(point(o), point(t)) for o in measured if o is not t)]
        return sorted(front, key=point)

    # ------------------------------------------------------------------ tables
    def rows(self) -> list[dict[str, Any]]:
        front = {t["trial"] for t in self.pareto()}
        best = self.best_trial
        rows = []
        for t in self.trials:
            measured = t["status"] in ("ok", "rejected")
            speed = self.speedup(t)
            rows.append({
                "trial": t["trial"],
                "origin": t.get("origin", ""),
                "recipe": recipe_text(t["config"]),
                f"{self.objective.label} vs base": f"{speed:.2f}x" if speed is not None else "-",
                "size vs base": f"{t['costs'][SIZE.name]:.2f}x" if measured else "-",
                f"{self.quality.label} drop": f"{t['quality_drop']:+.2%}" if measured else "-",
                "seconds": t["seconds"].get("total", 0),
                "verdict": ("best" if best is not None and t["trial"] == best["trial"] else t["status"])
                + (" (front)" if t["trial"] in front else "") + (" (reference)" if t.get("reference") else ""),
                "reason": t["reason"],
            })
        return rows

    def table(self, markdown: bool = False) -> str:
        """Every trial: recipe, objective and size against the base, quality drop, verdict and reason."""
        rows = self.rows()
        if not rows:
            return f"no trial finished ({self.stopped})" if self.stopped else "no trial finished"
        columns = list(rows[0])
        if markdown:
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in columns) + " |" for r in rows]
        else:
            widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns if c != "reason"}
            lines = ["  ".join(c.ljust(widths[c]) for c in widths) + "  reason"]
            lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in widths) + "  " + r["reason"] for r in rows]
        return "\n".join(lines + ["", self.summary()])

    def summary(self) -> str:
        """What was found, in words, including how the best compares with the reference recipes."""
        best = self.best_trial
        bound = f"{self.quality.label} drop <= {self.settings['max_quality_drop']:.2%}"
        if best is None:
            lines = [f"no recipe met {bound} ({len(self.trials)} trials; {self.stopped})"]
        else:
            lines = [(f"best within {bound}: trial {best['trial']}, {recipe_text(best['config'])}: "
                      f"{self.objective.label} {self.speedup(best):.2f}x the base, size "
                      f"{best['costs'][SIZE.name]:.2f}x, {self.quality.label} drop {best['quality_drop']:+.2%} "
                      f"({len(self.trials)} trials; {self.stopped})")]
        for ref in (t for t in self.trials if t.get("reference")):
            if self.speedup(ref) is None:
                lines.append(f"reference {recipe_text(ref['config'])}: {ref['status']} ({ref['reason']})")
                continue
            verdict = ""
            if best is not None:
                ahead = self.speedup(best) >= self.speedup(ref)
                verdict = f"; the best is {'at least as fast' if ahead else 'slower'} ({self.speedup(best):.2f}x)"
            lines.append(f"reference {recipe_text(ref['config'])}: {self.objective.label} {self.speedup(ref):.2f}x, "
                         f"{ref['status']}{verdict}")
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        payload = {"settings": self.settings, "left_out": self.left_out, "stopped": self.stopped,
                   "best_trial": self.best_trial["trial"] if self.best_trial else None,
                   "pareto": [t["trial"] for t in self.pareto()], "trials": self.trials}
        text = json.dumps(payload, indent=2, default=str)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return text

    def plot_pareto(self, path: str | os.PathLike) -> None:
        """Objective against quality drop, point size by model size; the front joined, the bound drawn."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            from smashlib.errors import MissingPackageError

            raise MissingPackageError("the Pareto plot needs matplotlib: pip install 'smashlib[plot]'") from None
        front = self.pareto()
        figure, axes = plt.subplots(figsize=(7, 4.5))
        timed = [t for t in self.trials if self.speedup(t) is not None]
        axes.scatter([100 * t["quality_drop"] for t in timed], [self.speedup(t) for t in timed],
                     s=[30 + 120 * t["costs"][SIZE.name] for t in timed], c="tab:green", alpha=0.6,
                     label="within bound (timed)")
        rejected = [t for t in self.trials if t["status"] == "rejected" and self.speedup(t) is None]
        axes.scatter([min(100 * t["quality_drop"], 5 * 100 * self.settings["max_quality_drop"] + 1) for t in rejected],
                     [1.0] * len(rejected), marker="x", c="tab:red", label="rejected on quality (not timed; at 1x)")
        axes.plot([100 * t["quality_drop"] for t in front], [self.speedup(t) for t in front], "k--", lw=0.8,
                  label="front (speed, size, quality)")
        axes.axvline(100 * self.settings["max_quality_drop"], color="gray", lw=0.8, ls=":")
        best = self.best_trial
        if best is not None:
            axes.annotate(f"best: trial {best['trial']}", (100 * best["quality_drop"], self.speedup(best)))
        axes.set_xlabel(f"{self.quality.label} drop (%)")
        axes.set_ylabel(f"{self.objective.label} vs base (x)")
        axes.set_title("smashlib tune: trials (point size: model size vs base)")
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
