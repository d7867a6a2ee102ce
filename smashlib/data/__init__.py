"""Data for calibration and evaluation: what ``SmashConfig.add_data`` accepts."""
from __future__ import annotations

from typing import Any


def attach_data(config: Any, data: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Return (data to keep, description for the saved config). Accepts a datasets.Dataset or a list of texts."""
    if isinstance(data, str):
        raise NotImplementedError("datasets by name arrive with the data registry")
    size = len(data) if hasattr(data, "__len__") else None
    return data, {"name": type(data).__name__, "size": size}
