"""LocalTexts: real English text of several kinds that a Debian-like machine already has, mixed.

Calibration on one kind of text fits the quantized model to that kind: 4-bit GPTQ calibrated on licence
texts alone loses 9% perplexity on other licences and 16% on Python's documentation (SmolLM2-135M,
docs/cpu_recipe.md). LocalTexts mixes the kinds smashlib can read offline on any Debian system, so the
default calibration is not tied to one of them:

- Python's own help pages (``pydoc_data.topics``, every Python): technical documentation and code;
- the licence texts of ``/usr/share/common-licenses`` (Debian's ``base-files``, on every Debian system):
  legal prose.

Each kind is split by whole documents (topics, licence files), by characters 80/10/10 with the seed, as
PydocTopics is, so no document is in two splits; documents are cut at blank lines into pieces of about
2000 characters, and the pieces of the kinds alternate, so any prefix of a split holds every kind. A
machine without the licence folder gets the pydoc part alone and a warning.
"""
from __future__ import annotations

import warnings
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any

from smashlib.data.pydoc_topics import documents, split_by_characters
from smashlib.data.splits import sample

LICENCES = Path("/usr/share/common-licenses")


def licence_documents() -> dict[str, str]:
    """Licence name -> text, each file once (Debian's GPL, LGPL, GFDL links to a version are skipped)."""
    if not LICENCES.is_dir():
        return {}
    return {path.name: path.read_text(encoding="utf-8", errors="replace")
            for path in sorted(LICENCES.iterdir()) if path.is_file() and not path.is_symlink()}


def pydoc_documents() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(topics)


#: kind -> the function that reads its documents (name -> text).
KINDS = {"python documentation": pydoc_documents, "licences": licence_documents}


def interleave(parts: list[list[tuple[str, str, str]]]) -> list[tuple[str, str, str]]:
    """Items of each part in turn: a1, b1, a2, b2, ..., then the rest of the longer parts."""
    return [item for item in chain.from_iterable(zip_longest(*parts)) if item is not None]


class LocalTextsSource:
    """Loads LocalTexts from the running machine's files."""

    #: Reads files of the running machine: no download, works offline.
    works_offline = True

    def describe(self) -> str:
        return "pydoc_data.topics + /usr/share/common-licenses (on the machine)"

    def markdown(self) -> str:
        return "`pydoc_data.topics` and Debian's `/usr/share/common-licenses`, mixed (no download)"

    def load(self, name: str, sizes: tuple[int, int, int], seed: int, collate_fn: str) -> tuple[Any, Any, Any]:
        from datasets import Dataset

        per_split: list[list[list[tuple[str, str, str]]]] = [[], [], []]
        for kind, read in KINDS.items():
            texts = read()
            if not texts:
                warnings.warn(f"LocalTexts: no {kind} on this machine; the mix holds the other kinds only.", stacklevel=2)
                continue
            for split, names in zip(per_split, split_by_characters(texts, seed)):
                split.append([(kind, doc, piece) for doc in names for piece in documents(texts[doc])])
        splits = []
        for parts, count in zip(per_split, sizes):
            rows = interleave(parts)
            dataset = Dataset.from_dict({"text": [text for *_, text in rows], "kind": [kind for kind, *_ in rows],
                                         "document": [doc for _, doc, _ in rows]})
            splits.append(sample(dataset, count, seed))
        return tuple(splits)
