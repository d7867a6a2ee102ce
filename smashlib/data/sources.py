"""Where built-in datasets come from, as data: a Hub repository, its config and split names, how its
columns map onto what the collate function reads, and how much of it to take.

One generic loader (:class:`HubSource`) reads every such description; the few datasets that need more
(COCO's images live on cocodataset.org, AIPodcast is one audio file) subclass it. Every Hub request
runs inside :func:`smashlib.data.hub.hub_access`, so an unreachable Hub fails fast with a clear error.
Large sources are streamed, so that only the sampled rows are downloaded.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smashlib.data.hub import hub_access, probe_timeout
from smashlib.data.splits import carve, sample

Row = Mapping[str, Any]


def messages_to_text(row: Row) -> dict[str, str]:
    """A chat (``messages``: list of {role, content}) as one text, one ``role: content`` line per turn."""
    return {"text": "\n".join(f"{turn['role']}: {turn['content']}" for turn in row["messages"])}


def first_caption(row: Row) -> dict[str, str]:
    return {"text": row["captions"][0] if row["captions"] else ""}


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face Hub and how to turn it into train/val/test with our column names.

    ``val`` or ``test`` set to None are carved from the split before them (train, or validation) with
    the seed, so every built-in dataset has three disjoint splits.
    """

    repo: str
    config: str | None = None
    train: str = "train"
    val: str | None = None
    test: str | None = None
    #: Stream instead of downloading the whole split (for sources of many GB): only sampled rows are read.
    streaming: bool = False
    #: (hub column, our column) pairs.
    rename: tuple[tuple[str, str], ...] = ()
    #: Row -> new columns (e.g. chat messages -> text), applied after sampling.
    prepare: Callable[[Row], dict[str, Any]] | None = None
    #: Drop rows whose value in this column is blank (WikiText has empty lines between paragraphs).
    nonempty: str | None = None
    #: An audio column to read undecoded (path/bytes), so no audio decoder package is needed.
    audio: str | None = None
    #: Rows read into the shuffle buffer per sampled row when streaming (bounded by MAX_BUFFER).
    buffer_per_row: int = 4

    MAX_BUFFER = 10_000

    def describe(self) -> str:
        """The source as the saved config records it: ``repo`` or ``repo / config``."""
        return f"{self.repo} / {self.config}" if self.config else self.repo

    def markdown(self) -> str:
        """The source for the docs' table, linked to its Hub page."""
        config = f" `{self.config}`" if self.config else ""
        return f"[`{self.repo}`](https://huggingface.co/datasets/{self.repo}){config}"

    # ------------------------------------------------------------------ loading
    def load(self, name: str, sizes: tuple[int, int, int], seed: int, collate_fn: str) -> tuple[Any, Any, Any]:
        """Train, validation and test ``datasets.Dataset`` objects of at most ``sizes`` rows."""
        plan = self._plan(sizes)
        with hub_access(name, self.describe(), collate_fn):
            fetched = {split: self._fetch(split, count, seed) for split, count in plan.items()}
            splits = self._divide(fetched, sizes, seed)
            return tuple(self._finish(self._columns(split)) for split in splits)

    def _plan(self, sizes: tuple[int, int, int]) -> dict[str, int]:
        """Hub split -> rows to fetch; a split that later gives rows to a carved one fetches those too."""
        train, val, test = sizes
        if self.val is None and self.test is None:
            return {self.train: train + val + test}
        if self.val is None:
            return {self.train: train + val, self.test: test}
        if self.test is None:
            return {self.train: train, self.val: val + test}
        return {self.train: train, self.val: val, self.test: test}

    def _divide(self, fetched: dict[str, Any], sizes: tuple[int, int, int], seed: int) -> tuple[Any, Any, Any]:
        train, val, test = sizes
        if self.val is None and self.test is None:
            return carve(fetched[self.train], (train, val, test), seed)
        if self.val is None:
            train_part, val_part = carve(fetched[self.train], (train, val), seed)
            return train_part, val_part, fetched[self.test]
        if self.test is None:
            val_part, test_part = carve(fetched[self.val], (val, test), seed)
            return fetched[self.train], val_part, test_part
        return fetched[self.train], fetched[self.val], fetched[self.test]

    def _fetch(self, split: str, count: int, seed: int) -> Any:
        from datasets import Audio, Dataset, Value, load_dataset

        dataset = load_dataset(self.repo, self.config, split=split, streaming=self.streaming)
        if self.audio:
            dataset = dataset.cast_column(self.audio, Audio(decode=False))
        if self.nonempty:
            column = self.nonempty
            dataset = dataset.filter(lambda row: bool(str(row[column]).strip()))
        if not self.streaming:
            return sample(dataset, count, seed)
        buffer = min(self.MAX_BUFFER, max(count, self.buffer_per_row * count))
        rows = list(dataset.shuffle(seed=seed, buffer_size=buffer).take(count))
        features = dataset.features
        if features is not None and self.audio:
            # kept as a plain {bytes, path} struct: re-encoding an Audio column would need torchcodec
            features = features.copy()
            features[self.audio] = {"bytes": Value("binary"), "path": Value("string")}
        return Dataset.from_list(rows, features=features)

    def _columns(self, dataset: Any) -> Any:
        for hub_column, our_column in self.rename:
            if hub_column in dataset.column_names and hub_column != our_column:
                if our_column in dataset.column_names:
                    dataset = dataset.remove_columns(our_column)
                dataset = dataset.rename_column(hub_column, our_column)
        if self.prepare is not None:
            dataset = dataset.map(self.prepare)
        return dataset

    def _finish(self, dataset: Any) -> Any:
        """A last step for sources whose rows need more than the Hub holds (overridden by subclasses)."""
        return dataset


@dataclass(frozen=True)
class CocoSource(HubSource):
    """COCO 2017: captions and image URLs from the Hub, and only the sampled images from cocodataset.org
    (the full archive is 19 GB). Images are cached next to the datasets cache."""

    url_column: str = "coco_url"

    def _finish(self, dataset: Any) -> Any:
        import urllib.request

        from datasets import Image
        from datasets import config as datasets_config

        folder = Path(datasets_config.HF_DATASETS_CACHE) / "smashlib-coco"
        folder.mkdir(parents=True, exist_ok=True)

        def fetch(row: Row) -> dict[str, str]:
            url = row[self.url_column]
            target = folder / url.rsplit("/", 1)[-1]
            if not target.exists():
                with urllib.request.urlopen(url, timeout=probe_timeout() * 3) as response:
                    partial = target.with_suffix(".part")
                    partial.write_bytes(response.read())
                    os.replace(partial, target)
            return {"image": str(target)}

        return dataset.map(fetch).cast_column("image", Image())


@dataclass(frozen=True)
class HubFileSource(HubSource):
    """One audio file from a Hub dataset repository, used as the single row of every split (AIPodcast:
    one long recording, for measuring speech models on long-form audio)."""

    filename: str = ""

    def load(self, name: str, sizes: tuple[int, int, int], seed: int, collate_fn: str) -> tuple[Any, Any, Any]:
        from datasets import Dataset
        from huggingface_hub import hf_hub_download

        with hub_access(name, self.describe(), collate_fn):
            path = hf_hub_download(self.repo, self.filename, repo_type="dataset")
        dataset = Dataset.from_dict({"audio": [path], "sentence": [""]})
        return dataset, dataset, dataset

    def describe(self) -> str:
        return f"{self.repo} / {self.filename}"

    def markdown(self) -> str:
        return super().markdown() + f" `{self.filename}`"
