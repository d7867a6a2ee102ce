"""Evaluation inputs, taken the way users already hold them, turned into one list of batches.

Accepted: a list of dicts of tensors (what a tokenizer or processor returns; ``decoder_input_ids``
included for encoder-decoder models), a single such dict, a list of strings plus the tokenizer (and
its keyword arguments), a ``datasets.Dataset`` with a text column, a dataset name or a
``SmashDataModule`` from :mod:`smashlib.data` (its test split; text packed into windows of
``max_length`` tokens), or any iterable of dicts (a DataLoader). Every metric
then reads the same batches, so base and smashed models always see identical inputs.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from smashlib.errors import MissingComponentError, SmashError
from smashlib.evaluation.runtime import (
    forward,
    is_encoder_decoder,
    logits_of,
    model_device,
    model_inputs,
    to_device,
    unwrap,
)

#: Tokens per text when the caller gives no ``max_length``: long enough for a real prefill, short
#: enough that a 2-core CPU evaluates a 135M model on a few texts in seconds.
DEFAULT_MAX_LENGTH = 256
#: Columns tried, in order, when a dataset holds text.
TEXT_COLUMNS = ("text", "sentence", "content", "document", "prompt")
LABEL_COLUMNS = ("labels", "label")
#: Logits kept per evaluation so quality metrics (perplexity, accuracy, agreement) share one forward
#: pass per model and batch instead of running their own; beyond this many bytes they are recomputed.
LOGITS_CACHE_BYTES = 1 << 30


@dataclass
class EvalInputs:
    """The batches every metric runs on, and one line saying what they are."""

    batches: list[dict[str, Any]]
    description: str
    _on_device: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _logits: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)
    _logits_bytes: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.batches = [dict(batch) for batch in self.batches]

    @property
    def num_samples(self) -> int:
        return sum(_batch_size(batch) for batch in self.batches)

    @property
    def num_tokens(self) -> int:
        """Tokens of input (attention mask sum where there is one), 0 for inputs that are not tokens."""
        total = 0
        for batch in self.batches:
            mask = batch.get("attention_mask")
            ids = batch.get("input_ids")
            if isinstance(mask, torch.Tensor):
                total += int(mask.sum())
            elif isinstance(ids, torch.Tensor):
                total += ids.numel()
        return total

    def __bool__(self) -> bool:
        return bool(self.batches)

    def on(self, device: torch.device) -> list[dict[str, Any]]:
        """The batches on ``device``, moved once and kept, so timed loops never time a copy."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = [to_device(batch, device) for batch in self.batches]
        return self._on_device[key]

    def logits(self, model: Any, index: int) -> torch.Tensor | None:
        """The logits of ``model`` on batch ``index`` (untimed forward pass, shared by the quality metrics)."""
        key = (id(model), index)
        if key in self._logits:
            return self._logits[key]
        batch = self.on(model_device(model))[index]
        logits = logits_of(forward(model, model_inputs(batch)))
        size = logits.numel() * logits.element_size() if isinstance(logits, torch.Tensor) else 0
        if self._logits_bytes + size <= LOGITS_CACHE_BYTES:
            self._logits[key] = logits
            self._logits_bytes += size
        return logits

    def prompt(self, device: torch.device) -> dict[str, Any]:
        """The first sample alone (batch of one, padding removed): the prompt generation starts from."""
        batch = self.on(device)[0]
        row = {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}
        mask = row.get("attention_mask")
        if isinstance(mask, torch.Tensor) and "input_ids" in row and mask.dim() == 2:
            keep = mask[0].bool()
            for key in ("input_ids", "attention_mask"):
                row[key] = row[key][:, keep]
        row.pop("labels", None)
        row.pop("decoder_input_ids", None)  # generation builds its own decoder inputs
        row.pop("decoder_attention_mask", None)
        return row


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def _is_data_module(data: Any) -> bool:
    from smashlib.data import SmashDataModule

    return isinstance(data, SmashDataModule)


def _is_batch(item: Any) -> bool:
    return isinstance(item, Mapping) and any(isinstance(v, torch.Tensor) for v in item.values())


def _text_column(dataset: Any) -> str:
    columns = list(getattr(dataset, "column_names", None) or [])
    for name in TEXT_COLUMNS:
        if name in columns:
            return name
    features = getattr(dataset, "features", {}) or {}
    for name in columns:
        if getattr(features.get(name), "dtype", None) == "string":
            return name
    raise SmashError(
        f"this dataset has no text column (columns: {', '.join(columns) or 'none'}); "
        f"name one of {', '.join(TEXT_COLUMNS)}, or pass a list of tokenized dicts instead."
    )


def tokenize_texts(
    texts: Sequence[str],
    tokenizer: Any,
    batch_size: int = 1,
    labels: Sequence[Any] | None = None,
    **tokenizer_kwargs: Any,
) -> list[dict[str, Any]]:
    """Texts -> batches of tensors with ``tokenizer`` (truncated to DEFAULT_MAX_LENGTH unless told)."""
    if tokenizer is None:
        raise MissingComponentError(
            "texts need a tokenizer to become model inputs: pass tokenizer=... (or attach one with "
            "cfg.add_tokenizer(...)), or pass a list of tokenized dicts instead."
        )
    options = {"return_tensors": "pt", "truncation": True, "max_length": DEFAULT_MAX_LENGTH}
    options.update(tokenizer_kwargs)
    if batch_size > 1 and "padding" not in options:
        if getattr(tokenizer, "pad_token", None) is None:
            raise SmashError(
                "batching texts needs padding, and this tokenizer has no pad token: use batch_size=1 or "
                "set tokenizer.pad_token (for example to tokenizer.eos_token)."
            )
        options["padding"] = True
    texts = [text for text in texts if text and text.strip()]
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = dict(tokenizer(list(texts[start : start + batch_size]), **options))
        if labels is not None:
            encoded["labels"] = torch.as_tensor(list(labels[start : start + batch_size]))
        batches.append(encoded)
    return batches


def _from_dataset(dataset: Any, tokenizer: Any, batch_size: int, limit: int | None, kwargs: dict) -> list[dict]:
    if limit is not None and len(dataset) > limit:
        dataset = dataset.select(range(limit))
    column = _text_column(dataset)
    labels = next((dataset[c] for c in LABEL_COLUMNS if c in dataset.column_names), None)
    return tokenize_texts(dataset[column], tokenizer, batch_size, labels=labels, **kwargs)


def _first_split(module: Any) -> str:
    for split in ("test", "val", "train"):
        dataset = module.split(split)
        if dataset is not None and (not hasattr(dataset, "__len__") or len(dataset)):
            return split
    raise SmashError(f"the data module '{module.name}' holds no samples in its test, val or train split.")


def _from_data_module(module: Any, tokenizer: Any, batch_size: int, limit: int | None, kwargs: dict) -> list[dict]:
    """A SmashDataModule's test split (else validation, else train: text never used to calibrate comes
    first). Text is packed into windows of ``max_length`` tokens with no padding, the usual way to
    measure perplexity; other data gives the module's own collated batches."""
    split = _first_split(module)
    entry = getattr(module, "entry", None)
    if entry is not None and entry.text_of is not None:
        from smashlib.data import pack_texts

        tokenizer = tokenizer if tokenizer is not None else module.resolved_tokenizer()
        if tokenizer is None:
            raise MissingComponentError(
                f"evaluating on '{module.name}' needs a tokenizer: pass tokenizer=... or call cfg.add_tokenizer(...)."
            )
        seq_len = int(kwargs.get("max_length", DEFAULT_MAX_LENGTH))
        return pack_texts(module.texts(split), tokenizer, seq_len, n_samples=limit, batch_size=batch_size)
    loader = module.dataloader(split, batch_size=batch_size)
    return list(itertools.islice(loader, None if limit is None else -(-limit // batch_size)))


def _from_name(name: str, tokenizer: Any, batch_size: int, limit: int | None, kwargs: dict) -> list[dict]:
    from smashlib.data import SmashDataModule

    module = SmashDataModule.from_string(name, tokenizer=tokenizer)
    return _from_data_module(module, tokenizer, batch_size, limit, kwargs)


def _add_decoder_inputs(batches: list[dict[str, Any]], model: Any) -> None:
    """Encoder-decoder models need decoder inputs: each batch gets them in place (see with_decoder_inputs)."""
    from smashlib.data.calibration import with_decoder_inputs

    module = unwrap(model)
    batches[:] = [with_decoder_inputs(module, batch) for batch in batches]


def prepare_inputs(
    data: Any,
    tokenizer: Any = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    max_samples: int | None = None,
    model: Any = None,
) -> EvalInputs:
    """Turn ``data`` (any form the module docstring lists) into :class:`EvalInputs`.

    ``max_samples`` bounds the number of samples (texts or rows), so an evaluation on a big dataset
    stays as short as the caller wants. ``model`` lets encoder-decoder models get decoder inputs.
    """
    if isinstance(data, EvalInputs):
        return data
    kwargs = dict(tokenizer_kwargs or {})
    if data is None:
        return EvalInputs([], "no inputs")
    if _is_batch(data):
        batches, description = [dict(data)], "1 batch"
    elif isinstance(data, str):
        batches = _from_name(data, tokenizer, batch_size, max_samples, kwargs)
        description = f"'{data}' (test split)"
    elif _is_data_module(data):
        batches = _from_data_module(data, tokenizer, batch_size, max_samples, kwargs)
        description = f"'{data.name}' ({_first_split(data)} split)"
    elif hasattr(data, "column_names") and hasattr(data, "select"):
        batches = _from_dataset(data, tokenizer, batch_size, max_samples, kwargs)
        description = f"dataset with {len(data)} rows"
    elif isinstance(data, Sequence) and data and all(isinstance(t, str) for t in data):
        texts = list(data[:max_samples]) if max_samples is not None else list(data)
        batches = tokenize_texts(texts, tokenizer, batch_size, **kwargs)
        description = f"{len(texts)} texts"
    elif isinstance(data, Iterable):
        batches = []
        for item in data:
            if not _is_batch(item):
                raise SmashError(
                    f"evaluation inputs must be dicts of tensors (as a tokenizer returns them), got "
                    f"{type(item).__name__}; pass texts with tokenizer=..., or a datasets.Dataset."
                )
            batches.append(dict(item))
            if max_samples is not None and sum(_batch_size(b) for b in batches) >= max_samples:
                break
        description = f"{len(batches)} batch{'es' if len(batches) != 1 else ''}"
    else:
        raise SmashError(
            f"cannot evaluate on {type(data).__name__}: pass a list of dicts of tensors, a list of texts with "
            "tokenizer=..., a datasets.Dataset, or a dataset name from smashlib.data."
        )
    if max_samples is not None:
        batches = _first_samples(batches, max_samples)
    if model is not None and is_encoder_decoder(model):
        _add_decoder_inputs(batches, model)
    inputs = EvalInputs(batches, description)
    if inputs.num_tokens:
        inputs.description += f", {inputs.num_samples} samples, {inputs.num_tokens} tokens"
    return inputs


def _first_samples(batches: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    kept, count = [], 0
    for batch in batches:
        if count >= limit:
            break
        size = _batch_size(batch)
        if count + size > limit:
            take = limit - count
            batch = {k: v[:take] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}
            size = take
        kept.append(batch)
        count += size
    return kept
