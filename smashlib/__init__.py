"""smashlib: make Hugging Face models smaller and faster with one SmashConfig and one smash() call."""
from __future__ import annotations

__version__ = "0.1.0"

from smashlib.config import SmashConfig
from smashlib.data import SmashDataModule, split_train_into_train_val_test
from smashlib.data.errors import DataError, DatasetUnavailableError
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
from smashlib.evaluation import Report, compare
from smashlib.model import SmashedModel
from smashlib.registry import algorithms_table
from smashlib.smash import smash

__all__ = [
    "DataError",
    "DatasetUnavailableError",
    "HyperparameterValueError",
    "InactiveHyperparameterError",
    "IncompatibleAlgorithmsError",
    "MissingComponentError",
    "MissingPackageError",
    "Report",
    "SmashConfig",
    "SmashConfigError",
    "SmashDataModule",
    "SmashError",
    "SmashedModel",
    "SmashedModelLoadError",
    "UnknownNameError",
    "UnsupportedDeviceError",
    "UnsupportedModelError",
    "__version__",
    "algorithms_table",
    "compare",
    "smash",
    "split_train_into_train_val_test",
    "tune",
]


def __getattr__(name: str):
    """``smashlib.tune`` is imported on first use, so ``import smashlib`` never imports SMAC3."""
    if name in ("tune", "TuneResult"):
        from smashlib import tuning

        return getattr(tuning, name)
    raise AttributeError(f"module 'smashlib' has no attribute '{name}'")
