"""Dividing, sampling and limiting datasets, reproducibly (every random choice takes a seed)."""
from __future__ import annotations

import random
from itertools import islice
from typing import Any

from smashlib.data.errors import DataError

#: The smallest dataset split_train_into_train_val_test accepts: 10% of it must hold at least one row.
MIN_ROWS_TO_SPLIT = 10


def split_train_into_train_val_test(dataset: Any, seed: int = 42) -> tuple[Any, Any, Any]:
    """Split one ``datasets.Dataset`` 80/10/10 into train, validation and test; the same seed gives the
    same rows in each split.

    >>> from datasets import Dataset
    >>> train, val, test = split_train_into_train_val_test(Dataset.from_dict({"text": [str(i) for i in range(50)]}))
    >>> len(train), len(val), len(test)
    (40, 5, 5)
    """
    size = length(dataset)
    if size is None or not hasattr(dataset, "train_test_split"):
        raise DataError(
            f"split_train_into_train_val_test needs a datasets.Dataset, not a {type(dataset).__name__}: "
            "convert it with datasets.Dataset.from_list(...) or pass (train, val, test) yourself."
        )
    if size < MIN_ROWS_TO_SPLIT:
        raise DataError(
            f"cannot split {size} rows 80/10/10 (need at least {MIN_ROWS_TO_SPLIT}): "
            "pass more rows, or pass (train, val, test) yourself."
        )
    first = dataset.train_test_split(test_size=0.2, seed=seed)
    second = first["test"].train_test_split(test_size=0.5, seed=seed)
    return first["train"], second["train"], second["test"]


def carve(dataset: Any, counts: tuple[int, ...], seed: int) -> tuple[Any, ...]:
    """Split ``dataset`` into consecutive parts of ``counts`` rows after a seeded shuffle; when it has
    fewer rows than asked, the parts shrink in proportion (every part keeps at least one row)."""
    size = len(dataset)
    if size < len(counts):
        raise DataError(f"cannot divide {size} rows into {len(counts)} splits: the source is too small.")
    total = sum(counts)
    if total > size:
        counts = tuple(max(1, count * size // total) for count in counts)
    order = list(range(size))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for count in counts:
        parts.append(dataset.select(sorted(order[start : start + count])))
        start += count
    return tuple(parts)


def sample(dataset: Any, count: int, seed: int) -> Any:
    """At most ``count`` rows of a ``datasets.Dataset``, chosen with ``seed``, kept in their original order."""
    if len(dataset) <= count:
        return dataset
    return dataset.select(sorted(random.Random(seed).sample(range(len(dataset)), count)))


def limit(dataset: Any, count: int) -> Any:
    """The first ``count`` rows of any dataset smashlib accepts (datasets.Dataset or IterableDataset,
    a torch map-style dataset, or a list)."""
    if count < 0:
        raise DataError(f"a limit must be 0 or more rows, not {count}.")
    if hasattr(dataset, "select") and length(dataset) is not None:
        return dataset.select(range(min(count, len(dataset))))
    if hasattr(dataset, "take"):  # datasets.IterableDataset
        return dataset.take(count)
    if isinstance(dataset, (list, tuple)):
        return dataset[:count]
    if length(dataset) is not None:
        from torch.utils.data import Subset

        return Subset(dataset, range(min(count, len(dataset))))
    return list(islice(iter(dataset), count))


def length(dataset: Any) -> int | None:
    """The number of rows, or None for streamed data whose length is unknown."""
    try:
        return len(dataset)
    except TypeError:
        return None


def first_rows(dataset: Any, count: int) -> list[Any]:
    """The first ``count`` rows, from map-style and streamed datasets alike."""
    size = length(dataset)
    if size is not None and hasattr(dataset, "__getitem__"):
        return [dataset[index] for index in range(min(count, size))]
    return list(islice(iter(dataset), count))
