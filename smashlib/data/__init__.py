"""Data for calibration and evaluation: built-in datasets by name, collate functions, SmashDataModule.

``SmashConfig.add_data`` accepts a built-in dataset's name, ``(train, val, test)`` datasets with a
collate function, a ``SmashDataModule``, one ``datasets.Dataset`` (split 80/10/10) or a list of texts;
see docs/data.md. Algorithms read it with :func:`calibration_batches`. ``datasets`` and Pillow are
imported only when data is loaded, so ``import smashlib`` stays light.
"""
from __future__ import annotations

from smashlib.data.attach import attach_data, to_data_module
from smashlib.data.calibration import calibration_batches, data_module, pack_texts
from smashlib.data.catalog import DATASETS, BuiltinDataset, get_dataset
from smashlib.data.collate import (
    COLLATE_FUNCTIONS,
    audio_processing_collate,
    image_classification_collate,
    image_generation_collate,
    question_answering_collate,
    text_generation_collate,
)
from smashlib.data.errors import DataError, DatasetUnavailableError
from smashlib.data.module import SmashDataModule
from smashlib.data.splits import split_train_into_train_val_test
from smashlib.data.table import datasets_table

__all__ = [
    "COLLATE_FUNCTIONS",
    "DATASETS",
    "BuiltinDataset",
    "DataError",
    "DatasetUnavailableError",
    "SmashDataModule",
    "attach_data",
    "audio_processing_collate",
    "calibration_batches",
    "data_module",
    "datasets_table",
    "get_dataset",
    "image_classification_collate",
    "image_generation_collate",
    "pack_texts",
    "question_answering_collate",
    "split_train_into_train_val_test",
    "text_generation_collate",
    "to_data_module",
]
