"""Pad callers' rows into one batch, and cut the batch's outputs back into each caller's part.

Generation pads on the left: every row's last prompt token sits in the last column, so the first new
token of every row comes from the same step, and the attention mask (with position ids counted from
it by ``generate``) makes the padding invisible. Forward passes pad on the right: positions then start
at 0 in every row without position ids, and a causal or masked model never lets a real token see the
padding after it, so each caller's positions get the values an unbatched call gives.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def left_pad(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of 1-D token rows padded on the left to the longest."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row):] = row
        mask[index, width - len(row):] = 1
    return ids, mask


def right_pad(blocks: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of callers' 2-D (ids, mask) blocks stacked and padded on the right."""
    width = max(ids.shape[1] for ids, _ in blocks)
    all_ids, all_masks = [], []
    for ids, mask in blocks:
        extra = width - ids.shape[1]
        all_ids.append(torch.nn.functional.pad(ids, (0, extra), value=pad_id))
        all_masks.append(torch.nn.functional.pad(mask, (0, extra), value=0))
    return torch.cat(all_ids), torch.cat(all_masks)


def cut_after_eos(tokens: torch.Tensor, eos_ids: Iterable[int]) -> torch.Tensor:
    """``tokens`` up to and including the first end-of-sequence token: where an unbatched call stops."""
    eos = torch.tensor(sorted(set(eos_ids)), dtype=tokens.dtype)
    if len(eos) == 0:
        return tokens
    hits = torch.isin(tokens, eos).nonzero()
    return tokens if len(hits) == 0 else tokens[: int(hits[0]) + 1]


def stack_right(rows: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    """1-D rows as one 2-D tensor, shorter rows filled with ``pad_id`` at the end (as generate fills them)."""
    width = max(len(row) for row in rows)
    return torch.stack([torch.nn.functional.pad(row, (0, width - len(row)), value=pad_id) for row in rows])


def _cut(value: Any, rows: slice, length: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        part = value[rows]
        if value.dim() == 3:  # (batch, sequence, features): logits, hidden states
            part = part[:, :length]
        elif value.dim() == 4:  # (batch, heads, sequence, sequence): attentions
            part = part[:, :, :length, :length]
        return part
    if isinstance(value, tuple):
        return tuple(_cut(v, rows, length) for v in value)
    return value


def cut_output(output: Any, rows: slice, length: int) -> Any:
    """The part of a batched forward output that belongs to the caller owning ``rows`` and ``length`` columns.

    A ModelOutput keeps its class; tensors of 3 dimensions are cut on the sequence axis, attentions on both.
    """
    if isinstance(output, torch.Tensor) or isinstance(output, tuple) and not hasattr(output, "keys"):
        return _cut(output, rows, length)
    return type(output)(**{key: _cut(value, rows, length) for key, value in output.items()})
