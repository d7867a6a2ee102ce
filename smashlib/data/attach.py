"""``cfg.add_data(...)``: every form of data a user may hold, turned into one SmashDataModule.

Accepted, in the order they are recognised: a SmashDataModule; a built-in dataset's name; a
``(train, val, test)`` tuple; a ``datasets.DatasetDict``; one ``datasets.Dataset`` (split 80/10/10);
a list of strings (texts). The module is linked to the config's tokenizer, so ``add_data`` and
``add_tokenizer`` can come in either order.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smashlib.data.collate import COLLATE_FUNCTIONS, infer_collate
from smashlib.data.errors import DataError
from smashlib.data.module import SmashDataModule
from smashlib.data.splits import first_rows, split_train_into_train_val_test

#: The keyword arguments cfg.add_data takes besides the data.
OPTIONS = ("collate_fn", "collate_args", "tokenizer", "batch_size", "seed", "max_samples", "name")


def _is_dataset(value: Any) -> bool:
    """A map-style or streamed dataset (not a plain list, not a string)."""
    return not isinstance(value, (str, bytes, list, tuple, dict)) and (
        hasattr(value, "__getitem__") or hasattr(value, "__iter__")
    )


def _is_dataset_dict(value: Any) -> bool:
    return (isinstance(value, dict) and "train" in value) or type(value).__name__ in ("DatasetDict", "IterableDatasetDict")


def _is_texts(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(text, str) for text in value)


def _is_triple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 3 and all(_is_dataset(part) or isinstance(part, list) for part in value)


def _collate_for(datasets: tuple[Any, ...], options: dict[str, Any]) -> str | Callable[..., Any]:
    """The collate_fn given, else the one the columns of the first rows call for."""
    if options.get("collate_fn") is not None:
        return options.pop("collate_fn")
    options.pop("collate_fn", None)
    rows = next((first_rows(dataset, 1) for dataset in datasets if first_rows(dataset, 1)), [])
    columns = list(rows[0]) if rows and isinstance(rows[0], dict) else []
    guessed = infer_collate(columns)
    if guessed is None:
        raise DataError(
            f"cannot tell which collate function fits columns {columns or '(no rows)'}: pass collate_fn=, one of "
            f"{', '.join(COLLATE_FUNCTIONS)} (e.g. cfg.add_data(data, collate_fn='text_generation_collate'))."
        )
    return guessed


def _module(datasets: tuple[Any, Any, Any], options: dict[str, Any], default_name: str) -> SmashDataModule:
    collate_fn = _collate_for(datasets, options)
    options.pop("seed", None)
    if options.pop("max_samples", None) is not None:
        raise DataError("max_samples applies to built-in datasets only: limit your own data with .select(range(n)).")
    return SmashDataModule.from_datasets(
        datasets, collate_fn, tokenizer=options.pop("tokenizer", None), collate_args=options.pop("collate_args", None),
        batch_size=options.pop("batch_size", 8), name=options.pop("name", default_name),
    )


def _from_module(module: SmashDataModule, options: dict[str, Any]) -> SmashDataModule:
    return module  # its settings are its own; any option given is reported as not applying


def _from_name(name: str, options: dict[str, Any]) -> SmashDataModule:
    if options.pop("collate_fn", None) is not None:
        raise DataError(f"'{name}' comes with its collate function; to use another, load it yourself and pass datasets.")
    return SmashDataModule.from_string(
        name, tokenizer=options.pop("tokenizer", None), collate_args=options.pop("collate_args", None),
        batch_size=options.pop("batch_size", 8), seed=options.pop("seed", 42), max_samples=options.pop("max_samples", None),
    )


def _from_triple(datasets: tuple[Any, Any, Any], options: dict[str, Any]) -> SmashDataModule:
    return _module(tuple(datasets), options, "custom")


def _from_dataset_dict(splits: Any, options: dict[str, Any]) -> SmashDataModule:
    val = next((splits[key] for key in ("validation", "val", "valid") if key in splits), None)
    test = splits.get("test")
    if val is None or test is None:
        return _from_dataset(splits["train"], options)
    return _module((splits["train"], val, test), options, "custom")


def _from_dataset(dataset: Any, options: dict[str, Any]) -> SmashDataModule:
    splits = split_train_into_train_val_test(dataset, seed=options.get("seed", 42))
    return _module(splits, options, "custom")


def _from_texts(texts: list[str], options: dict[str, Any]) -> SmashDataModule:
    from datasets import Dataset

    options.setdefault("name", f"{len(texts)} texts")
    return _from_dataset(Dataset.from_dict({"text": texts}), options)


#: (recogniser, builder) pairs, tried in order.
ATTACHERS: tuple[tuple[Callable[[Any], bool], Callable[[Any, dict[str, Any]], SmashDataModule]], ...] = (
    (lambda data: isinstance(data, SmashDataModule), _from_module),
    (lambda data: isinstance(data, str), _from_name),
    (_is_texts, _from_texts),
    (_is_triple, _from_triple),
    (_is_dataset_dict, _from_dataset_dict),
    (_is_dataset, _from_dataset),
)


def to_data_module(data: Any, **options: Any) -> SmashDataModule:
    """A SmashDataModule from any form ``cfg.add_data`` accepts (see the module docstring)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DataError(f"cfg.add_data got unknown argument(s) {', '.join(unknown)}: it takes {', '.join(OPTIONS)}.")
    for recognises, build in ATTACHERS:
        if recognises(data):
            left = dict(options)
            module = build(data, left)
            if left:
                raise DataError(
                    f"{', '.join(sorted(left))} does not apply when cfg.add_data gets a {type(data).__name__}."
                )
            return module
    raise DataError(
        f"cfg.add_data cannot use a {type(data).__name__}. Pass a built-in dataset's name (e.g. 'PydocTopics'), "
        "(train, val, test) datasets with collate_fn=..., a SmashDataModule, a datasets.Dataset or DatasetDict, "
        "or a list of texts."
    )


def attach_data(config: Any, data: Any, **kwargs: Any) -> tuple[SmashDataModule, dict[str, Any]]:
    """What ``SmashConfig.add_data`` keeps: the data module (linked to the config's tokenizer, checked
    against it when there is one) and its description for the saved config (names and sizes)."""
    module = to_data_module(data, **kwargs)
    module.use_tokenizer_of(config.components)
    if module.resolved_tokenizer() is not None or not module.needs_tokenizer:
        module.check_collate()
    return module, module.describe()
