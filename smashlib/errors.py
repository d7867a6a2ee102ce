"""The exceptions smashlib raises, so users can catch one family of errors and know what to fix.

Every message names the thing that is wrong, what is allowed, and the call that fixes it.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class SmashError(Exception):
    """Base class of every error smashlib raises on purpose."""


class SmashConfigError(SmashError, ValueError):
    """A configuration key or value is not valid."""


class UnknownNameError(SmashConfigError, KeyError):
    """A group, algorithm or hyperparameter name that does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InactiveHyperparameterError(SmashConfigError):
    """A hyperparameter whose algorithm is not chosen."""


class HyperparameterValueError(SmashConfigError):
    """A hyperparameter value out of range or not among the choices."""


class IncompatibleAlgorithmsError(SmashConfigError):
    """Two chosen algorithms cannot be combined."""


class ComponentLoadError(SmashConfigError):
    """A tokenizer, processor or dataset named by a path or Hub id cannot be loaded from it."""


class MissingComponentError(SmashError):
    """An algorithm needs a tokenizer, processor or data that was not attached."""


class MissingPackageError(SmashError, ImportError):
    """An algorithm needs a package that is not installed."""


class UnsupportedDeviceError(SmashError):
    """An algorithm cannot run on the configured device."""


class UnsupportedModelError(SmashError, TypeError):
    """An algorithm cannot handle this model."""


class SmashedModelLoadError(SmashError, OSError):
    """A saved smashed model cannot be loaded (missing, corrupt or from a newer smashlib)."""


class InvalidInputError(SmashError, ValueError):
    """An input given to a smashed model cannot be used (e.g. one caller's request to a batcher)."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class UnsupportedExportError(SmashError, ValueError):
    """A smashed model (an algorithm, a grid or an architecture) that a saving format cannot represent."""
