"""TiedEmbedding: the input embedding of a model whose output head is tied to it, once the head is quantized.

Models like SmolLM2, Llama 3.2 and Gemma 3 use one matrix as input embedding and output head. Once a
quantizer replaces the head, the embedding reads the head's quantized rows instead of keeping its own
float copy, so the table is stored once. Whatever the embedding module did *around* its weight must
survive the swap: Gemma 3's ``Gemma3TextScaledWordEmbedding`` multiplies the looked-up rows by
``sqrt(hidden_size)`` (relative logit error 0.23 instead of 0.02 on a tiny Gemma 3 when that was lost).
:func:`tie_spec` reads what the embedding does from its structure alone (it must give the same answer on
a weightless skeleton at load time): a plain ``nn.Embedding``, or a subclass known to only scale its rows
(an ``embed_scale``), can be tied; any other subclass is left as it is, keeping its own weight.

Subclasses say only how to look rows up in their storage (:meth:`TiedEmbedding.rows`): int8 rows with a
scale each (smashlib.layers.int8_linear), packed low-bit rows (smashlib.layers.packed_int).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TieSpec:
    """What a tied embedding must reproduce of the module it replaces."""

    padding_idx: int | None
    dtype: torch.dtype
    scale: float | None  # rows are multiplied by it (in the rows' dtype), as the scaled embedding did


def _scale_of(embedding: nn.Module) -> float | None:
    scalar = getattr(embedding, "scalar_embed_scale", None)  # transformers keeps the float beside the buffer
    if isinstance(scalar, (int, float)):
        return float(scalar)
    scale = getattr(embedding, "embed_scale", None)
    if isinstance(scale, (int, float)):
        return float(scale)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1 and not scale.is_meta:
        return float(scale)
    return None


def tie_spec(embedding: nn.Module) -> TieSpec | None:
    """How to replace ``embedding`` by a :class:`TiedEmbedding`, or None when it does something else around
    its weight that a tied embedding cannot reproduce (it then keeps its own weight)."""
    if not isinstance(embedding, nn.Embedding):
        return None
    scale = None
    if type(embedding) is not nn.Embedding:
        scale = _scale_of(embedding)
        if scale is None:
            return None
    return TieSpec(embedding.padding_idx, embedding.weight.dtype, scale)


class TiedEmbedding(nn.Module):
    """Base of the embeddings that read a quantized, tied output head's rows; follows dtype casts."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32,
                 padding_idx: int | None = None, scale: float | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        #: dtype of the rows handed to the model (the embedding's dtype before quantization); follows casts.
        self.output_dtype = dtype
        self.padding_idx = padding_idx
        self.embed_scale = scale

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The dequantized rows for ``ids`` (any float dtype), shaped ``(*ids.shape, embedding_dim)``."""
        raise NotImplementedError

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.rows(ids).to(self.output_dtype)
        if self.embed_scale is not None:
            rows = rows * torch.tensor(self.embed_scale, dtype=rows.dtype, device=rows.device)
        return rows

    def _apply(self, fn, recurse=True):
        probe = fn(torch.zeros((), dtype=self.output_dtype))  # a cast such as .half() changes the output dtype
        if probe.is_floating_point():
            self.output_dtype = probe.dtype
        return super()._apply(fn, recurse)

    def describe_scale(self) -> str:
        return "" if self.embed_scale is None else f", scaled by {self.embed_scale:g}"
