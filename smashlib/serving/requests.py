"""Check one caller's input in the caller's own thread, before it joins a batch.

Why here: an input that would break the batch (token ids outside the vocabulary, a mask of the wrong
shape, an empty prompt) is refused with an InvalidInputError raised to that caller alone, so the
other callers of the same batch never see it.
"""
from __future__ import annotations

from typing import Any

import torch

from smashlib.errors import InvalidInputError, MissingComponentError


def as_token_block(input_ids: Any, attention_mask: Any, vocab_size: int | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(ids, mask, was_1d): the caller's ids as a 2-D LongTensor with a mask of the same shape, checked."""
    if not isinstance(input_ids, torch.Tensor):
        if isinstance(input_ids, (list, tuple)) and input_ids and all(isinstance(t, int) for t in input_ids):
            input_ids = torch.tensor(input_ids)
        else:
            raise InvalidInputError(
                f"input_ids must be a tensor of token ids (or a list of ints, or text with a tokenizer), "
                f"not {type(input_ids).__name__}: pass tokenizer(text, return_tensors='pt')['input_ids']."
            )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise InvalidInputError(f"input_ids must hold integer token ids, not {input_ids.dtype}.")
    was_1d = input_ids.dim() == 1
    ids = input_ids.unsqueeze(0) if was_1d else input_ids
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InvalidInputError(
            f"input_ids must have the shape (batch, length) or (length,) with at least one token, not {tuple(input_ids.shape)}."
        )
    ids = ids.long().cpu()
    if vocab_size is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise InvalidInputError(
            f"input_ids hold token ids from {int(ids.min())} to {int(ids.max())}, outside this model's vocabulary "
            f"[0, {vocab_size - 1}]: were they made by another model's tokenizer?"
        )
    if attention_mask is None:
        mask = torch.ones_like(ids)
    else:
        mask = torch.as_tensor(attention_mask).cpu()
        mask = mask.unsqueeze(0) if mask.dim() == 1 else mask
        if tuple(mask.shape) != tuple(ids.shape):
            raise InvalidInputError(
                f"attention_mask has the shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}: they must match."
            )
        mask = mask.long()
    return ids, mask, was_1d


def unpadded_rows(ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each row's tokens without its padding (left or right); a row's unmasked tokens must be contiguous."""
    rows = []
    for index in range(ids.shape[0]):
        kept = mask[index].nonzero().flatten()
        if len(kept) == 0:
            raise InvalidInputError(f"row {index} of attention_mask is all zeros: that prompt has no tokens.")
        first, last = int(kept[0]), int(kept[-1])
        if last - first + 1 != len(kept):
            raise InvalidInputError(
                f"row {index} of attention_mask has holes (zeros between ones): only left or right padding can be batched."
            )
        rows.append(ids[index, first: last + 1])
    return rows


def require_tokenizer(tokenizer: Any, algorithm: str) -> Any:
    if tokenizer is None:
        raise MissingComponentError(
            f"{algorithm} was given text but has no tokenizer: call cfg.add_tokenizer(...) before smash(), "
            "or pass token ids."
        )
    return tokenizer


def is_text(value: Any) -> bool:
    """Whether ``value`` is a prompt string or a non-empty list of them."""
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)
    )
