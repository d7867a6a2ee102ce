"""Helpers for tests that tamper with saved folders."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``change`` to the folder's smash_config.json (the manifest) in place."""
    path = folder / "smash_config.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
