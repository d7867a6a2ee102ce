"""smashlib: make Hugging Face models smaller and faster with one SmashConfig and one smash() call.

``import smashlib`` stays light (no torch, no transformers): SmashConfig and the errors are imported
here, everything that needs torch (smash, SmashedModel, compare, the data module) on first use.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from smashlib.config import SmashConfig
from smashlib.errors import (
    ComponentLoadError,
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
from smashlib.registry import algorithms_table

if TYPE_CHECKING:
    from smashlib.data import SmashDataModule, split_train_into_train_val_test
    from smashlib.data.errors import DataError, DatasetUnavailableError
    from smashlib.evaluation import Report, compare
    from smashlib.model import SmashedModel
    from smashlib.smash import smash

#: Public names that import torch, and the module each comes from (loaded by __getattr__ on first use).
LAZY: dict[str, str] = {
    "DataError": "smashlib.data.errors",
    "DatasetUnavailableError": "smashlib.data.errors",
    "Report": "smashlib.evaluation",
    "SmashDataModule": "smashlib.data",
    "SmashedModel": "smashlib.model",
    "compare": "smashlib.evaluation",
    "smash": "smashlib.smash",
    "split_train_into_train_val_test": "smashlib.data",
    "tune": "smashlib.tuning",  # imports SMAC3 only when first used
    "TuneResult": "smashlib.tuning",
}


def __getattr__(name: str) -> Any:
    module = LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smashlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY})


class _Package(types.ModuleType):
    """Keeps ``smashlib.smash`` the function: importing the submodule smashlib/smash.py (which any
    ``from smashlib.smash import ...`` does) would otherwise bind the module over it, as an eager
    ``from smashlib.smash import smash`` here used to prevent."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "smash" and isinstance(value, types.ModuleType):
            value = value.smash
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "ComponentLoadError",
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

