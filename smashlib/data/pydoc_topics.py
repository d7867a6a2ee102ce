"""PydocTopics: real English text that ships with every Python, so demos and tests need no download.

``pydoc_data.topics`` holds the help pages of the language reference (about 80 topics, 450 KB of
prose and examples). Topics, not paragraphs, are divided between train, validation and test, so text
used for calibration never reappears in the test split that perplexity is measured on. Each topic is
cut into documents of whole paragraphs of about ``DOCUMENT_CHARS`` characters.
"""
from __future__ import annotations

import random
from typing import Any

from smashlib.data.splits import sample

DOCUMENT_CHARS = 2000
#: Shares of the topics for train, validation and test.
TOPIC_SHARES = (0.8, 0.1, 0.1)


def documents(text: str, limit: int = DOCUMENT_CHARS) -> list[str]:
    """``text`` cut at blank lines into pieces of at most about ``limit`` characters (a paragraph longer
    than that stays whole: cutting inside a paragraph would split sentences and code)."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in (part.strip("\n") for part in text.split("\n\n")):
        if not paragraph.strip():
            continue
        if current and size + len(paragraph) > limit:
            pieces.append("\n\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        pieces.append("\n\n".join(current))
    return pieces


def split_by_characters(texts: dict[str, str], seed: int) -> tuple[list[str], list[str], list[str]]:
    """The names of ``texts`` in train, validation and test. Names are shuffled with ``seed``, then taken in
    that order for test until it holds 10% of the characters (skipping one that would overshoot by half),
    then for validation likewise; the rest is train. Counting characters, not documents, keeps the shares
    even though one document can be 100x longer than another."""
    names = sorted(texts)
    random.Random(seed).shuffle(names)
    total = sum(len(texts[name]) for name in names)
    test: list[str] = []
    val: list[str] = []
    for part, share in ((test, TOPIC_SHARES[2]), (val, TOPIC_SHARES[1])):
        target, size = share * total, 0
        for name in list(names):
            if size >= target:
                break
            if size + len(texts[name]) <= 1.5 * target:  # a huge document would overshoot: leave it to train
                part.append(name)
                names.remove(name)
                size += len(texts[name])
    return sorted(names), sorted(val), sorted(test)


def topic_split(seed: int) -> tuple[list[str], list[str], list[str]]:
    """The topic names of train, validation and test (:func:`split_by_characters` over the topics)."""
    from pydoc_data.topics import topics

    return split_by_characters(topics, seed)


class PydocSource:
    """Loads PydocTopics from the running Python's own files."""

    #: Reads files of the running machine: no download, works offline.
    works_offline = True

    def describe(self) -> str:
        return "pydoc_data.topics (ships with Python)"

    def markdown(self) -> str:
        return "`pydoc_data.topics` (ships with Python, no download)"

    def load(self, name: str, sizes: tuple[int, int, int], seed: int, collate_fn: str) -> tuple[Any, Any, Any]:
        from pydoc_data.topics import topics

        from datasets import Dataset

        splits = []
        for names, count in zip(topic_split(seed), sizes):
            rows = [(topic, piece) for topic in names for piece in documents(topics[topic])]
            dataset = Dataset.from_dict({"text": [text for _, text in rows], "topic": [topic for topic, _ in rows]})
            splits.append(sample(dataset, count, seed))
        return tuple(splits)
