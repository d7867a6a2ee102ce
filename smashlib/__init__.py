"""smashlib: make Hugging Face models smaller and faster with one SmashConfig and one smash() call."""
from __future__ import annotations

__version__ = "0.1.0"

from smashlib.config import SmashConfig
from smashlib.errors import (
    HyperparameterValueError,
    InactiveHyperparameterError,
    IncompatibleAlgorithmsError,
    MissingComponentError,
    MissingPackageError,
    SmashConfigError,
    SmashedModelLoadError,
    SmashError,
    UnknownNameError,
    UnsupportedDeviceError,
    UnsupportedModelError,
)
from smashlib.model import SmashedModel
from smashlib.registry import algorithms_table
from smashlib.smash import smash

__all__ = [
    "HyperparameterValueError",
    "InactiveHyperparameterError",
    "IncompatibleAlgorithmsError",
    "MissingComponentError",
    "MissingPackageError",
    "SmashConfig",
    "SmashConfigError",
    "SmashError",
    "SmashedModel",
    "SmashedModelLoadError",
    "UnknownNameError",
    "UnsupportedDeviceError",
    "UnsupportedModelError",
    "__version__",
    "algorithms_table",
    "smash",
]
