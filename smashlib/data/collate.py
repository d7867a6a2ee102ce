"""Collate functions by name: turn a list of dataset rows into the batch a model or pipeline takes.

Each one is registered with the columns it reads, so a SmashDataModule can check a dataset before the
first batch (and name the missing column), and can guess the collate function from a dataset's columns.
Text batches come out as transformers models take them (``model(**batch)`` gives the loss): padded
``input_ids``, ``attention_mask``, and ``labels`` equal to the input ids with padding set to -100,
because transformers causal LMs shift the labels themselves.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from smashlib.data.audio import audio_input
from smashlib.data.errors import DataError
from smashlib.data.images import image_to_tensor
from smashlib.errors import MissingComponentError, UnknownNameError, did_you_mean

Row = Mapping[str, Any]

#: transformers' loss functions skip label positions holding this value.
IGNORE_INDEX = -100


def pad_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its end-of-sequence token (most causal LM
    tokenizers have no pad token, and we do not modify the user's tokenizer to add one), else 0."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0


def pad_token_ids(sequences: Sequence[Sequence[int]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence on the tokenizer's padding side: ``input_ids`` and ``attention_mask``."""
    width = max(1, max((len(ids) for ids in sequences), default=0))
    left = getattr(tokenizer, "padding_side", "right") == "left"
    input_ids = torch.full((len(sequences), width), pad_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if not ids:
            continue
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _tokenize(tokenizer: Any, texts: list[str], max_seq_len: int | None) -> list[list[int]]:
    encoded = tokenizer(texts, truncation=max_seq_len is not None, max_length=max_seq_len)
    return [list(ids) for ids in encoded["input_ids"]]


def _labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)


def text_generation_collate(rows: Sequence[Row], tokenizer: Any, max_seq_len: int | None = 512) -> dict[str, torch.Tensor]:
    """Rows with a ``text`` string -> ``input_ids``, ``attention_mask``, ``labels`` (padding -> -100).

    Texts are truncated to ``max_seq_len`` tokens and padded to the longest in the batch.
    """
    batch = pad_token_ids(_tokenize(tokenizer, [row["text"] for row in rows], max_seq_len), tokenizer)
    batch["labels"] = _labels(batch["input_ids"], batch["attention_mask"])
    return batch


def question_answering_collate(rows: Sequence[Row], tokenizer: Any, max_seq_len: int | None = 512) -> dict[str, torch.Tensor]:
    """Rows with ``question`` and ``answer`` strings -> the question as ``input_ids``/``attention_mask``
    and the answer as ``labels`` (padding -> -100), the form sequence-to-sequence models train on."""
    batch = pad_token_ids(_tokenize(tokenizer, [row["question"] for row in rows], max_seq_len), tokenizer)
    answers = pad_token_ids(_tokenize(tokenizer, [row["answer"] for row in rows], max_seq_len), tokenizer)
    batch["labels"] = _labels(answers["input_ids"], answers["attention_mask"])
    return batch


def image_generation_collate(rows: Sequence[Row], img_size: int = 512, output_format: str = "int") -> dict[str, Any]:
    """Rows with an ``image`` (PIL image, path or bytes) and its ``text`` prompt -> ``text`` (list of
    prompts) and ``images`` (``[batch, 3, img_size, img_size]``; uint8 for "int", else float)."""
    images = torch.stack([image_to_tensor(row["image"], img_size, output_format) for row in rows])
    return {"text": [row["text"] for row in rows], "images": images}


def image_classification_collate(rows: Sequence[Row], img_size: int = 224, output_format: str = "float") -> dict[str, torch.Tensor]:
    """Rows with an ``image`` and an integer ``label`` -> ``pixel_values`` (``[batch, 3, img_size, img_size]``,
    0..1 floats by default) and ``labels``: the keyword arguments transformers image classifiers take."""
    pixels = torch.stack([image_to_tensor(row["image"], img_size, output_format) for row in rows])
    return {"pixel_values": pixels, "labels": torch.tensor([int(row["label"]) for row in rows], dtype=torch.long)}


def audio_processing_collate(rows: Sequence[Row]) -> dict[str, list[Any]]:
    """Rows with ``audio`` (waveform tensor or array, file path, or a datasets audio value), or only a
    ``path`` to the audio file (as many speech datasets' metadata tables have), and its ``sentence``
    transcript -> ``audio`` (waveform tensors or file paths, as speech pipelines accept) and ``sentence``
    (list of strings)."""
    return {
        "audio": [audio_input(row["audio"] if row.get("audio") is not None else row["path"]) for row in rows],
        "sentence": [row["sentence"] for row in rows],
    }


@dataclass(frozen=True)
class CollateFunction:
    """A collate function and what it needs from the data."""

    name: str
    function: Callable[..., Any]
    #: The columns every row must have.
    columns: tuple[str, ...]
    task: str
    needs_tokenizer: bool = False
    #: The text of a row, for packing text into calibration sequences; None for non-text data.
    text_of: Callable[[Row], str] | None = None
    #: Columns that may stand in for one of ``columns`` (audio given as a ``path`` only).
    stand_ins: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def missing_columns(self, present: Iterable[str]) -> list[str]:
        """The columns of ``columns`` that neither ``present`` nor any of their stand-ins provide."""
        have = set(present)
        return [c for c in self.columns if c not in have and not have & set(self.stand_ins.get(c, ()))]

    def arguments(self) -> tuple[str, ...]:
        """The keyword arguments it takes besides the rows (and the tokenizer, which is bound separately)."""
        parameters = list(inspect.signature(self.function).parameters)[1:]
        return tuple(name for name in parameters if name != "tokenizer")

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        unknown = sorted(set(arguments) - set(self.arguments()))
        if unknown:
            raise DataError(
                f"{self.name} has no argument {', '.join(repr(u) for u in unknown)}: "
                f"it takes {', '.join(self.arguments()) or 'no arguments'}."
            )


def _entries(*entries: CollateFunction) -> dict[str, CollateFunction]:
    return {entry.name: entry for entry in entries}


COLLATE_FUNCTIONS: dict[str, CollateFunction] = _entries(
    CollateFunction(
        "text_generation_collate", text_generation_collate, ("text",), "text generation",
        needs_tokenizer=True, text_of=lambda row: row["text"],
    ),
    CollateFunction(
        "question_answering_collate", question_answering_collate, ("question", "answer"), "question answering",
        needs_tokenizer=True, text_of=lambda row: f"{row['question']} {row['answer']}",
    ),
    CollateFunction("image_generation_collate", image_generation_collate, ("image", "text"), "image generation"),
    CollateFunction(
        "image_classification_collate", image_classification_collate, ("image", "label"), "image classification"
    ),
    CollateFunction(
        "audio_processing_collate", audio_processing_collate, ("audio", "sentence"), "audio",
        stand_ins={"audio": ("path",)},
    ),
)


def get_collate(name: str) -> CollateFunction:
    """The registered collate function called ``name``."""
    try:
        return COLLATE_FUNCTIONS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown collate function '{name}'.{did_you_mean(name, COLLATE_FUNCTIONS)} "
            f"Choices: {', '.join(COLLATE_FUNCTIONS)}; or pass your own callable."
        ) from None


def infer_collate(columns: Sequence[str]) -> str | None:
    """The collate function whose columns the data has, preferring the one that reads the most columns;
    None when no function fits or two fit equally well (image + text + label)."""
    present = set(columns)
    fitting = [entry for entry in COLLATE_FUNCTIONS.values() if not entry.missing_columns(present)]
    if not fitting:
        return None
    best = max(len(entry.columns) for entry in fitting)
    winners = [entry.name for entry in fitting if len(entry.columns) == best]
    return winners[0] if len(winners) == 1 else None


def bind_collate(entry: CollateFunction, arguments: Mapping[str, Any], tokenizer: Any) -> Callable[[Sequence[Row]], Any]:
    """``entry``'s function with its arguments and tokenizer filled in, ready for a DataLoader."""
    entry.check_arguments(arguments)
    if entry.needs_tokenizer:
        if tokenizer is None:
            raise MissingComponentError(
                f"{entry.name} needs a tokenizer to turn text into token ids: call cfg.add_tokenizer(...) "
                "(before or after cfg.add_data), or pass tokenizer=... to SmashDataModule."
            )
        return functools.partial(entry.function, tokenizer=tokenizer, **arguments)
    return functools.partial(entry.function, **arguments)
