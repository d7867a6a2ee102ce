"""Report: the measured values of one or more models, their ratios to the first, and where they were taken.

One object, four views: ``print(report)`` (terminal table), ``report._repr_html_()`` (Jupyter),
``report.to_json()`` (scripts; ``Report.from_json`` reads it back) and ``report.plot("report.png")``
(bar chart of the ratios; needs matplotlib). The first model is the reference (the base model);
every ratio is model / reference, and each row says whether lower or higher is better.
"""
from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from smashlib.errors import SmashError, UnknownNameError, did_you_mean
from smashlib.evaluation.formatting import (
    format_number,
    format_ratio,
    html_table,
    markdown_table,
    text_table,
    verdict,
)
from smashlib.evaluation.machine import describe_machine
from smashlib.evaluation.metrics.base import Quantity

#: Version of the JSON layout of to_json, read back by from_json.
REPORT_SCHEMA_VERSION = 1


@dataclass
class Report:
    """Values per model (``models[0]`` is the reference), with the machine and settings they came from."""

    models: list[str]
    quantities: list[Quantity]
    values: dict[str, dict[str, float | None]]
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: metric name -> why it was not measured (does not apply, no inputs, or failed with the error)
    skipped: dict[str, str] = field(default_factory=dict)
    #: model label -> what the model is (class, algorithms applied)
    descriptions: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading values
    @property
    def reference(self) -> str:
        return self.models[0]

    def _quantity(self, key: str) -> Quantity:
        for quantity in self.quantities:
            if quantity.key == key:
                return quantity
        keys = [q.key for q in self.quantities]
        raise UnknownNameError(f"this report has no value '{key}'.{did_you_mean(key, keys)} Values: {', '.join(keys)}.")

    def _model(self, model: str | None) -> str:
        if model is None:
            return self.models[-1]
        if model not in self.models:
            raise UnknownNameError(f"this report has no model '{model}': models are {', '.join(self.models)}.")
        return model

    def value(self, key: str, model: str | None = None) -> float | None:
        """The value of ``key`` for ``model`` (default: the last model, the smashed one)."""
        self._quantity(key)
        return self.values.get(self._model(model), {}).get(key)

    def ratio(self, key: str, model: str | None = None) -> float | None:
        """``model``'s value divided by the reference's (None where either is missing or the reference is 0)."""
        value, reference = self.value(key, model), self.value(key, self.reference)
        if value is None or reference in (None, 0):
            return None
        return value / reference

    def __getitem__(self, key: str) -> float | None:
        return self.value(key)

    def __contains__(self, key: object) -> bool:
        return any(q.key == key for q in self.quantities)

    # ------------------------------------------------------------------ tables
    def _label(self, quantity: Quantity) -> str:
        return f"{quantity.label} ({quantity.unit})" if quantity.unit and quantity.unit != "count" else quantity.label

    def _plot_label(self, quantity: Quantity) -> str:
        unit = f" ({quantity.unit}{_direction(quantity)})" if quantity.unit and quantity.unit != "count" else (
            f" ({_direction(quantity)[2:]})" if _direction(quantity) else "")
        return quantity.label + unit

    def _rows_by_metric(self) -> tuple[list[str], list[list[str]]]:
        others = self.models[1:]
        headers = ["metric", *self.models]
        if len(others) == 1:
            headers += [f"{others[0]}/{self.reference}", "verdict"]
        else:
            headers += [f"{m}/{self.reference}" for m in others]
        rows = []
        for quantity in self.quantities:
            row = [self._label(quantity)]
            row += [format_number(self.value(quantity.key, m), quantity.unit) for m in self.models]
            ratios = [self.ratio(quantity.key, m) for m in others]
            row += [format_ratio(r) for r in ratios]
            if len(others) == 1:
                row.append(verdict(ratios[0], quantity.lower_is_better))
            rows.append(row)
        return headers, rows

    def _rows_by_model(self) -> tuple[list[str], list[list[str]]]:
        headers = ["model", *(self._label(q) for q in self.quantities)]
        rows = []
        for model in self.models:
            row = [model]
            for quantity in self.quantities:
                value = format_number(self.value(quantity.key, model), quantity.unit)
                ratio = self.ratio(quantity.key, model)
                row.append(value if model == self.reference or ratio is None else f"{value} ({format_ratio(ratio)})")
            rows.append(row)
        return headers, rows

    def _layout(self, by: str | None) -> tuple[list[str], list[list[str]]]:
        by = by or ("metric" if len(self.models) <= 2 else "model")
        if by not in ("metric", "model"):
            raise ValueError("by must be 'metric' (one row per value) or 'model' (one row per model)")
        return self._rows_by_metric() if by == "metric" else self._rows_by_model()

    def footnotes(self) -> list[str]:
        notes = []
        for model, description in self.descriptions.items():
            notes.append(f"{model}: {description}")
        if self.settings.get("inputs"):
            notes.append(f"inputs: {self.settings['inputs']}")
        if self.machine:
            notes.append(f"machine: {describe_machine(self.machine)}")
        for metric, reason in self.skipped.items():
            notes.append(f"not measured: {metric}: {reason}")
        return notes

    def table(self, by: str | None = None) -> str:
        """The terminal table: one row per value (two models) or one row per model (more)."""
        headers, rows = self._layout(by)
        title = "smashlib report: " + " vs ".join(self.models)
        return "\n".join([title, "", text_table(headers, rows), "", *self.footnotes()])

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"Report(models={self.models}, values={len(self.quantities)}, skipped={list(self.skipped)})"

    def to_markdown(self, by: str | None = None) -> str:
        headers, rows = self._layout(by)
        notes = "\n".join(f"- {note}" for note in self.footnotes())
        return markdown_table(headers, rows) + ("\n\n" + notes if notes else "")

    def _repr_html_(self) -> str:
        headers, rows = self._layout(None)
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.footnotes())
        return html_table(headers, rows, caption="smashlib report: " + " vs ".join(self.models)) + f"<ul>{notes}</ul>"

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        ratios = {
            model: {q.key: self.ratio(q.key, model) for q in self.quantities} for model in self.models[1:]
        }
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "models": list(self.models),
            "quantities": [asdict(q) for q in self.quantities],
            "values": self.values,
            "ratios": ratios,
            "machine": self.machine,
            "settings": self.settings,
            "skipped": self.skipped,
            "descriptions": self.descriptions,
        }

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """The report as JSON text; also written to ``path`` when one is given."""
        text = json.dumps(self.to_dict(), indent=indent, default=str)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Report:
        version = payload.get("schema_version")
        if not isinstance(version, int) or version > REPORT_SCHEMA_VERSION:
            raise SmashError(f"this report has schema version {version!r}; this smashlib reads up to {REPORT_SCHEMA_VERSION}.")
        return cls(
            models=list(payload["models"]),
            quantities=[Quantity(**q) for q in payload["quantities"]],
            values={m: dict(v) for m, v in payload["values"].items()},
            machine=dict(payload.get("machine", {})),
            settings=dict(payload.get("settings", {})),
            skipped=dict(payload.get("skipped", {})),
            descriptions=dict(payload.get("descriptions", {})),
        )

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> Report:
        """A report from JSON text or from a file holding it."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text_or_path, encoding="utf-8") as handle:
                text = handle.read()
        return cls.from_dict(json.loads(text))

    @classmethod
    def combine(cls, reports: Sequence[Report]) -> Report:
        """One report with the models of several (same metrics measured separately, e.g. one per process).

        The first report's first model becomes the reference of the ratios.
        """
        models: list[str] = []
        values: dict[str, dict[str, float | None]] = {}
        quantities: dict[str, Quantity] = {}
        descriptions: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for report in reports:
            for model in report.models:
                if model in values:
                    raise SmashError(f"two reports measure a model labelled '{model}': give them distinct labels.")
                models.append(model)
                values[model] = dict(report.values.get(model, {}))
            for quantity in report.quantities:
                quantities.setdefault(quantity.key, quantity)
            descriptions.update(report.descriptions)
            for metric, reason in report.skipped.items():
                skipped[f"{metric} [{', '.join(report.models)}]"] = reason
        first = reports[0]
        return cls(models, list(quantities.values()), values, first.machine, first.settings, skipped, descriptions)

    def select(self, keys: Sequence[str]) -> Report:
        """A report with only the values ``keys``, in that order (e.g. the columns of a benchmark table)."""
        quantities = [self._quantity(key) for key in keys]
        values = {model: {k: v for k, v in row.items() if k in keys} for model, row in self.values.items()}
        return Report(list(self.models), quantities, values, self.machine, self.settings, self.skipped, self.descriptions)

    # ------------------------------------------------------------------ chart
    def plot(self, path: str | os.PathLike = "report.png") -> str:
        """Save a bar chart of every ratio to the reference (1.0 = unchanged) and return the path."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise SmashError(
                "report.plot needs matplotlib: pip install matplotlib (or pip install 'smashlib[plot]'); "
                "print(report) needs nothing more."
            ) from None
        quantities = [q for q in self.quantities if any(self.ratio(q.key, m) is not None for m in self.models[1:])]
        if not quantities:
            raise SmashError("this report has no ratio to plot: it needs values of at least two models.")
        others = self.models[1:]
        height = 0.8 / len(others)
        figure, axis = plt.subplots(figsize=(8, 0.5 + 0.45 * len(quantities) * max(1, len(others) ** 0.5)))
        for index, model in enumerate(others):
            ratios = [self.ratio(q.key, model) or 0.0 for q in quantities]
            positions = [i + index * height for i in range(len(quantities))]
            colors = [_color(verdict(self.ratio(q.key, model), q.lower_is_better)) for q in quantities]
            bars = axis.barh(positions, ratios, height=height, color=colors, label=model, edgecolor="black", linewidth=0.3)
            for bar, ratio in zip(bars, ratios):
                axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {ratio:.2f}x", va="center", fontsize=8)
        axis.axvline(1.0, color="black", linewidth=1)
        largest = max(self.ratio(q.key, m) or 0.0 for q in quantities for m in others)
        axis.set_xlim(0, max(1.0, largest) * 1.15)  # room for the labels at the bars' ends
        axis.set_yticks([i + height * (len(others) - 1) / 2 for i in range(len(quantities))])
        axis.set_yticklabels([self._plot_label(q) for q in quantities], fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel(f"ratio to {self.reference} (green: better, red: worse)")
        axis.set_title("smashlib report: " + " vs ".join(self.models), fontsize=10)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return str(path)


def _direction(quantity: Quantity) -> str:
    if quantity.lower_is_better is None:
        return ""
    return ", lower is better" if quantity.lower_is_better else ", higher is better"


def _color(judgement: str) -> str:
    return {"better": "#4caf50", "worse": "#e57373", "same": "#bdbdbd"}.get(judgement, "#90a4ae")
