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
from smashlib.data import SmashDataModule, split_train_into_train_val_test
from smashlib.data.errors import DataError, DatasetUnavailableError
from smashlib.evaluation import Report, compare
from smashlib.model import SmashedModel
from smashlib.registry import algorithms_table
from smashlib.smash import smash

__all__ = [
    "DataError",
    "DatasetUnavailableError",
    "SmashDataModule",
    "split_train_into_train_val_test",
    "HyperparameterValueError",
    "InactiveHyperparameterError",
    "IncompatibleAlgorithmsError",
    "MissingComponentError",
    "MissingPackageError",
    "SmashConfig",
    "SmashConfigError",
    "SmashError",
    "Report",
    "SmashedModel",
    "SmashedModelLoadError",
    "UnknownNameError",
    "UnsupportedDeviceError",
    "UnsupportedModelError",
    "__version__",
    "algorithms_table",
    "compare",
    "smash",
]
