"""SmashDataModule: train/validation/test data plus the collate function that turns rows into batches.

Algorithms read calibration data from it, evaluation reads test batches; ``cfg.add_data`` builds one
from whatever the user holds. The tokenizer a text collate function needs may arrive after the data
(``cfg.add_data`` before ``cfg.add_tokenizer``, as transformers users write it in either order): a
module attached to a config looks the config's tokenizer up when it first builds a batch, and only
then fails, naming ``cfg.add_tokenizer``, if there is still none.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from smashlib.data.catalog import get_dataset
from smashlib.data.collate import CollateFunction, bind_collate, get_collate
from smashlib.data.errors import DataError
from smashlib.data.splits import first_rows, length, limit

SPLITS = ("train", "val", "test")
#: Rows run through the collate function when a module is built, to catch a mismatch at once.
ROWS_CHECKED = 2


class SmashDataModule:
    """Three splits (any ``datasets.Dataset``/``IterableDataset``, torch dataset or list of row dicts) and
    a collate function, by name (see :data:`smashlib.data.collate.COLLATE_FUNCTIONS`) or your own callable.

    >>> from datasets import Dataset
    >>> rows = Dataset.from_dict({"text": ["a b c", "d e"]})
    >>> module = SmashDataModule(rows, rows, rows, "text_generation_collate")
    >>> module.sizes()
    {'train': 2, 'val': 2, 'test': 2}
    """

    def __init__(
        self,
        train: Any,
        val: Any,
        test: Any,
        collate_fn: str | Callable[[list[Any]], Any] = "text_generation_collate",
        *,
        collate_args: Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        batch_size: int = 8,
        name: str = "custom",
        source: str | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, not {batch_size!r}.")
        self.train_dataset, self.val_dataset, self.test_dataset = train, val, test
        self.entry: CollateFunction | None = get_collate(collate_fn) if isinstance(collate_fn, str) else None
        if self.entry is None and not callable(collate_fn):
            raise DataError(f"collate_fn must be a name or a callable, not a {type(collate_fn).__name__}.")
        self._custom_collate = None if self.entry else collate_fn
        self.collate_args = dict(collate_args or {})
        if self.entry is not None:
            self.entry.check_arguments(self.collate_args)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        self.source = source
        self._tokenizer_owner: Any = None  # the Components of the config this module is attached to
        self._tried = False
        self._description: dict[str, Any] = {}
        self.check_columns()
        if self.resolved_tokenizer() is not None or not self.needs_tokenizer:
            self.check_collate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_datasets(
        cls,
        datasets: Sequence[Any],
        collate_fn: str | Callable[[list[Any]], Any],
        tokenizer: Any = None,
        collate_args: Mapping[str, Any] | None = None,
        batch_size: int = 8,
        name: str = "custom",
    ) -> SmashDataModule:
        """From ``(train, val, test)``."""
        if isinstance(datasets, (str, bytes)) or len(datasets) != 3:
            raise DataError(
                "datasets must be (train, val, test): three datasets. To split one dataset 80/10/10 use "
                "split_train_into_train_val_test(dataset, seed=42), or pass it alone to cfg.add_data."
            )
        train, val, test = datasets
        return cls(train, val, test, collate_fn, collate_args=collate_args, tokenizer=tokenizer, batch_size=batch_size, name=name)

    @classmethod
    def from_string(
        cls,
        name: str,
        tokenizer: Any = None,
        collate_args: Mapping[str, Any] | None = None,
        batch_size: int = 8,
        seed: int = 42,
        max_samples: int | tuple[int, int, int] | None = None,
    ) -> SmashDataModule:
        """A built-in dataset by name (see ``smashlib.data.DATASETS`` and the docs' table): loaded, sampled
        to at most ``max_samples`` rows per split (default: the dataset's own sizes) with ``seed``."""
        entry = get_dataset(name)
        sizes = _sizes(max_samples, entry.sizes)
        train, val, test = entry.source.load(name, sizes, seed, entry.collate_fn)
        arguments = {**entry.collate_args, **(collate_args or {})}
        return cls(
            train, val, test, entry.collate_fn, collate_args=arguments, tokenizer=tokenizer,
            batch_size=batch_size, name=name, source=entry.source.describe(),
        )

    # ------------------------------------------------------------------ the collate function
    @property
    def collate_name(self) -> str:
        if self.entry is not None:
            return self.entry.name
        return getattr(self._custom_collate, "__name__", type(self._custom_collate).__name__)

    @property
    def needs_tokenizer(self) -> bool:
        return bool(self.entry and self.entry.needs_tokenizer)

    def use_tokenizer_of(self, components: Any) -> SmashDataModule:
        """Fall back to ``components.tokenizer`` (read when a batch is built, so it may be attached later)."""
        self._tokenizer_owner = components
        return self

    def resolved_tokenizer(self) -> Any:
        """The module's own tokenizer, else the tokenizer of the config it is attached to, else None."""
        if self.tokenizer is not None:
            return self.tokenizer
        return getattr(self._tokenizer_owner, "tokenizer", None)

    @property
    def collate_fn(self) -> Callable[[list[Any]], Any]:
        """The collate function with its arguments and tokenizer bound, as a DataLoader takes it. The first
        time it is available (a tokenizer may arrive late) it is tried on the first rows of each split."""
        function = self._bound_collate()
        if not self._tried:
            self._try_collate(function)
        return function

    def _bound_collate(self) -> Callable[[list[Any]], Any]:
        if self.entry is None:
            return self._custom_collate
        return bind_collate(self.entry, self.collate_args, self.resolved_tokenizer())

    def check_columns(self) -> None:
        """Every non-empty split's first row has the columns the collate function reads."""
        if self.entry is None:
            return
        for split, dataset in self.splits().items():
            rows = first_rows(dataset, 1)
            if not rows:
                continue
            row = rows[0]
            if not isinstance(row, Mapping):
                raise DataError(
                    f"the {split} split of '{self.name}' yields {type(row).__name__} rows; {self.entry.name} "
                    f"needs rows that are dicts with the columns {', '.join(self.entry.columns)}."
                )
            missing = self.entry.missing_columns(row)
            if missing:
                present = ", ".join(repr(column) for column in row) or "none"
                raise DataError(
                    f"the {split} split of '{self.name}' has no column {', '.join(repr(m) for m in missing)}, "
                    f"which {self.entry.name} reads (columns present: {present}). Rename yours, e.g. "
                    f"dataset.rename_column('your_column', '{missing[0]}'), or choose the collate_fn that fits: "
                    "see smashlib.data.COLLATE_FUNCTIONS."
                )

    def check_collate(self) -> None:
        """Run the collate function on the first rows of each split: a mismatch fails here, not mid-smash."""
        self._try_collate(self._bound_collate())

    def _try_collate(self, function: Callable[[list[Any]], Any]) -> None:
        self._tried = True
        for split, dataset in self.splits().items():
            rows = first_rows(dataset, ROWS_CHECKED)
            if not rows:
                continue
            try:
                function(rows)
            except Exception as error:  # re-raised with the split and the function named
                raise DataError(
                    f"{self.collate_name} cannot batch the first rows of the {split} split of '{self.name}': "
                    f"{type(error).__name__}: {error}"
                ) from error

    # ------------------------------------------------------------------ data access
    def splits(self) -> dict[str, Any]:
        return {"train": self.train_dataset, "val": self.val_dataset, "test": self.test_dataset}

    def split(self, name: str) -> Any:
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}': use one of {', '.join(SPLITS)}.")
        return self.splits()[name]

    def sizes(self) -> dict[str, int | None]:
        """Rows per split (None for streamed data of unknown length)."""
        return {split: length(dataset) for split, dataset in self.splits().items()}

    def limit_datasets(self, limit_to: int | Sequence[int]) -> SmashDataModule:
        """Keep the first rows only: one number for every split, or (train, val, test)."""
        limits = (limit_to,) * 3 if isinstance(limit_to, int) else tuple(limit_to)
        if len(limits) != 3 or not all(isinstance(count, int) for count in limits):
            raise DataError(f"limit_datasets takes one integer or three (train, val, test), not {limit_to!r}.")
        self.train_dataset, self.val_dataset, self.test_dataset = (
            limit(dataset, count) for dataset, count in zip(self.splits().values(), limits)
        )
        self.describe()
        return self

    def dataloader(self, split: str, batch_size: int | None = None, shuffle: bool = False, **kwargs: Any) -> Any:
        """A torch DataLoader over ``split`` that yields collated batches."""
        from torch.utils.data import DataLoader, IterableDataset

        dataset = self.split(split)
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            shuffle = False  # streamed data has no random access
        return DataLoader(
            dataset, batch_size=batch_size or self.batch_size, shuffle=shuffle, collate_fn=self.collate_fn, **kwargs
        )

    def train_dataloader(self, batch_size: int | None = None, shuffle: bool = True, **kwargs: Any) -> Any:
        return self.dataloader("train", batch_size, shuffle, **kwargs)

    def val_dataloader(self, batch_size: int | None = None, **kwargs: Any) -> Any:
        return self.dataloader("val", batch_size, False, **kwargs)

    def test_dataloader(self, batch_size: int | None = None, **kwargs: Any) -> Any:
        return self.dataloader("test", batch_size, False, **kwargs)

    def texts(self, split: str = "train") -> Iterator[str]:
        """The text of each row of ``split`` (text datasets only), for packing calibration sequences."""
        text_of = self.entry.text_of if self.entry is not None else None
        if text_of is None:
            raise DataError(
                f"'{self.name}' is {self.entry.task if self.entry else 'custom-collated'} data, not text: "
                "attach text (e.g. cfg.add_data('PydocTopics')) for text calibration."
            )
        dataset = self.split(split)
        rows = (dataset[index] for index in range(len(dataset))) if length(dataset) is not None else iter(dataset)
        return (text_of(row) for row in rows)

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """What the saved config records about this data: names and sizes, never the data. The same dict
        is updated in place by :meth:`limit_datasets`, so a config holding it stays current."""
        self._description.clear()
        self._description.update(name=self.name, collate_fn=self.collate_name, sizes=self.sizes())
        if self.source:
            self._description["source"] = self.source
        return self._description

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={size if size is not None else '?'}" for split, size in self.sizes().items())
        return f"SmashDataModule('{self.name}', {sizes}, collate_fn='{self.collate_name}', batch_size={self.batch_size})"


def _sizes(max_samples: int | Sequence[int] | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if max_samples is None:
        return default
    sizes = (max_samples,) * 3 if isinstance(max_samples, int) else tuple(max_samples)
    if len(sizes) != 3 or not all(isinstance(size, int) and size > 0 for size in sizes):
        raise DataError(f"max_samples takes one positive integer or three (train, val, test), not {max_samples!r}.")
    return sizes  # type: ignore[return-value]
