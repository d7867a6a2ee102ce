"""The trial log: one JSON line per finished trial, written as it finishes, so a search can resume.

The first line holds what the trials were measured for (objective, quality, bound, data, device):
rerunning tune() with the same log continues the search, and a log written for other settings is
refused rather than mixed in, since its ratios would not mean the same thing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from smashlib.errors import SmashError
from smashlib.tuning.space import config_key


class TrialLogError(SmashError):
    """A trial log cannot be read, or belongs to a search with other settings."""


class TrialLog:
    """Append-only JSON lines: a header, then one record per trial. ``path=None`` keeps it in memory."""

    def __init__(self, path: str | os.PathLike | None, settings: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.settings = settings
        self.records: list[dict[str, Any]] = []
        if self.path is not None and self.path.is_file() and self.path.stat().st_size:
            self._read()
        elif self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write({"kind": "header", "settings": settings})

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):
                    continue  # a line cut short by a crash mid-write: that trial simply runs again
                raise TrialLogError(f"{self.path}, line {number}, is not JSON: delete the line or use another log.") from None
        header = entries[0] if entries else {}
        if header.get("kind") != "header":
            raise TrialLogError(f"{self.path} is not a smashlib tune log (no header line): use another path.")
        if header["settings"] != self.settings:
            changed = sorted(k for k in {*header["settings"], *self.settings}
                             if header["settings"].get(k) != self.settings.get(k))
            raise TrialLogError(
                f"{self.path} was written by a search with other settings ({', '.join(changed)} differ): "
                "its trials are not comparable. Use another log path, or the same settings to resume."
            )
        self.records = [e for e in entries[1:] if e.get("kind") == "trial"]

    def _write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, record: dict[str, Any]) -> None:
        record = {"kind": "trial", **record}
        self.records.append(record)
        if self.path is not None:
            self._write(record)

    def find(self, values: dict[str, Any]) -> dict[str, Any] | None:
        """The record of this recipe, if it was tried (the latest one)."""
        key = config_key(values)
        return next((r for r in reversed(self.records) if config_key(r["config"]) == key), None)
