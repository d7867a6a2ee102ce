"""The errors the data package raises, so users can catch them apart from configuration errors.

Both are ``SmashError`` subclasses: catching ``SmashError`` still catches everything smashlib raises on
purpose. Each message names the dataset, split or column, and the call that fixes it.
"""
from __future__ import annotations

from smashlib.errors import SmashError


class DataError(SmashError, ValueError):
    """Data in a form smashlib cannot use: a missing column, a wrong type, a split too small to divide."""


class DatasetUnavailableError(SmashError, OSError):
    """A built-in dataset could not be fetched (Hub unreachable, offline mode, gated or missing repo)."""
