"""Tokenized text sequences for calibration and evaluation, from the data attached to a config.

Calibration (GPTQ, SmoothQuant, pruning) wants many tokens in sequences of one fixed length, with no
padding to skew activation statistics. So documents are tokenized, joined with the end-of-sequence
token between them (the way they were seen in pre-training) and cut into windows of ``seq_len``
tokens, the standard recipe of the GPTQ paper's code. The document order is shuffled with a seed, so
the windows mix many documents and are the same on every run.
"""
from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import torch

from smashlib.data.errors import DataError
from smashlib.data.module import SmashDataModule
from smashlib.data.splits import length
from smashlib.errors import MissingComponentError

#: Documents tokenized per tokenizer call (fast tokenizers work in parallel over a batch).
TOKENIZE_CHUNK = 64


def _token_stream(texts: Iterable[str], tokenizer: Any) -> Iterator[int]:
    separator = getattr(tokenizer, "eos_token_id", None)
    iterator = iter(texts)
    while chunk := [text for text in islice(iterator, TOKENIZE_CHUNK) if text and text.strip()]:
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            yield from ids
            if isinstance(separator, int):
                yield separator


def pack_texts(
    texts: Iterable[str], tokenizer: Any, seq_len: int, n_samples: int | None = None, batch_size: int = 1
) -> list[dict[str, torch.Tensor]]:
    """Batches of ``{"input_ids", "attention_mask"}``, each ``[batch_size, seq_len]``, from consecutive
    windows of the texts' joined tokens. Stops after ``n_samples`` sequences (all when None); tokenizes
    only as much text as that needs."""
    if seq_len < 1 or batch_size < 1 or (n_samples is not None and n_samples < 1):
        raise DataError(f"seq_len, batch_size and n_samples must be positive (got {seq_len}, {batch_size}, {n_samples}).")
    stream = _token_stream(texts, tokenizer)
    sequences: list[list[int]] = []
    while n_samples is None or len(sequences) < n_samples:
        window = list(islice(stream, seq_len))
        if len(window) < seq_len:
            break
        sequences.append(window)
    if not sequences:
        raise DataError(f"the data holds fewer than {seq_len} tokens: attach more text or lower seq_len.")
    if n_samples is not None and len(sequences) < n_samples:
        warnings.warn(
            f"the data holds only {len(sequences)} sequences of {seq_len} tokens; {n_samples} were asked for.",
            stacklevel=2,
        )
    ids = torch.tensor(sequences, dtype=torch.long)
    return [
        {"input_ids": part, "attention_mask": torch.ones_like(part)}
        for part in ids.split(batch_size)
    ]


def with_decoder_inputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with decoder inputs for an encoder-decoder model, built from its ``labels`` (or else its input
    ids, the text itself) the way the model builds them in training: shifted right behind the decoder start
    token (``prepare_decoder_input_ids_from_labels`` where the model has it). Calibration, training and
    evaluation feed token batches to T5 or BART this way. Batches that have decoder inputs, or no 2-D ids,
    are returned as they are."""
    if "decoder_input_ids" in batch or "input_ids" not in batch:
        return batch
    target = batch.get("labels", batch["input_ids"])
    if target.dim() != 2:
        return batch
    build = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if callable(build):
        return {**batch, "decoder_input_ids": build(labels=target)}
    start = getattr(getattr(model, "config", None), "decoder_start_token_id", None)
    if start is None:
        return batch
    shifted = target.new_full(target.shape, start)
    shifted[:, 1:] = target[:, :-1].clamp(min=0)
    return {**batch, "decoder_input_ids": shifted}


def data_module(components: Any) -> SmashDataModule:
    """The SmashDataModule attached to a config (``components`` = ``cfg.components``), or a clear error."""
    module = getattr(components, "data", None)
    if module is None:
        raise MissingComponentError(
            "this step needs data: call cfg.add_data(...) before smash() (e.g. cfg.add_data('PydocTopics'), "
            "real English text that needs no download)."
        )
    if not isinstance(module, SmashDataModule):
        raise DataError(f"cfg.components.data holds a {type(module).__name__}; attach data with cfg.add_data(...).")
    return module


def calibration_batches(
    components: Any,
    n_samples: int = 128,
    seq_len: int = 512,
    batch_size: int = 1,
    split: str = "train",
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """``n_samples`` tokenized sequences of exactly ``seq_len`` tokens from the attached data's ``split``,
    in batches of ``batch_size``: a list of ``{"input_ids", "attention_mask"}`` tensors, ready for
    ``model(**batch)``. Use split="test" for evaluation (perplexity) on text never used to calibrate.

    Text data is packed (see the module docstring); other data (images, audio) gives the first
    collated batches of the split instead. The tokenizer is the data module's own, else the config's.
    """
    module = data_module(components)
    if module.entry is None or module.entry.text_of is None:
        batches = math.ceil(n_samples / batch_size)
        return list(islice(iter(module.dataloader(split, batch_size=batch_size)), batches))
    tokenizer = module.resolved_tokenizer() or getattr(components, "tokenizer", None)
    if tokenizer is None:
        raise MissingComponentError(
            f"tokenizing '{module.name}' for calibration needs a tokenizer: call cfg.add_tokenizer(...) "
            "with the model's tokenizer."
        )
    texts: Iterable[str] = module.texts(split)
    if length(module.split(split)) is not None:  # streamed data cannot be shuffled; it is read in order
        texts = list(texts)
        random.Random(seed).shuffle(texts)
    return pack_texts(texts, tokenizer, seq_len, n_samples=n_samples, batch_size=batch_size)
