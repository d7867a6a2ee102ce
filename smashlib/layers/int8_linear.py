"""Int8DynamicLinear and Int8Embedding: int8 weights with per-row fp32 scales, on PyTorch's CPU int8 kernel.

Int8DynamicLinear runs fbgemm's ``quantized::linear_dynamic``: the activation is quantized per call
(one scale per tensor), multiplied in int8 and rescaled; measured here 3-15x faster than an fp32
matrix-vector product. Int8Embedding is the input-embedding side of the same int8 matrix, for models
whose output head is tied to their input embeddings: the two modules then share one int8 weight and
its scales, as they shared one fp32 weight before.

The int8 weight and its scales are ordinary buffers, so the state dict is plain tensors (int8 in
safetensors); the kernel's packed form is built on first use, cached beside the weight and never saved. The scales and bias stay
float32 when the model is cast to bf16/fp16 (the kernel computes in fp32, and a bf16 scale would keep
only 3 significant digits); the outputs follow the dtype of the inputs.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from smashlib.layers.cpu_features import has_vnni
from smashlib.layers.quantized_linear import QuantizedLinear
from smashlib.layers.tied_embedding import TiedEmbedding
from smashlib.targets import is_linear  # noqa: F401  (re-exported: the one linear test lives in smashlib.targets)

#: Buffers that keep float32 whatever dtype the model is cast to.
FLOAT32_BUFFERS = ("weight_scale", "bias")



def quantize_per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (row): returns (int8 weight, float32 scale per row)."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return quantized, scale


@lru_cache(maxsize=1)
def reduce_range() -> bool:
    """Whether activations must use 7 bits instead of 8 on this CPU.

    Without VNNI, fbgemm multiplies uint8 by int8 with ``vpmaddubsw``, which adds pairs of products into
    int16 and saturates when both are near full scale (2 * 255 * 127 > 32767); halving the activation
    range avoids that, at some accuracy. CPUs with AVX512-VNNI (or AVX-VNNI) accumulate in int32 and
    keep all 8 bits.
    """
    return not has_vnni()


def _weight_of(linear: nn.Module) -> torch.Tensor:
    """The (out_features, in_features) weight of an nn.Linear or a Conv1D."""
    return linear.weight if isinstance(linear, nn.Linear) else linear.weight.t()


class _Float32Scales(nn.Module):
    """Keeps FLOAT32_BUFFERS in float32 through ``.to(dtype)``, ``.half()`` and the like (moves still apply)."""

    def _apply(self, fn, recurse=True):
        kept = {name: self._buffers[name] for name in FLOAT32_BUFFERS if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            converted = self._buffers[name]
            if converted.dtype != original.dtype:  # a cast: move the exact float32 values instead
                self._buffers[name] = original.to(converted.device)
        return self


#: weight tensor -> (versions of weight, scale and bias, fbgemm's packed weight). Weakly keyed, so an
#: entry goes with its weight; the versions catch in-place changes (load_state_dict copies into buffers).
_PACKED = WeakTensorKeyDictionary()


def packed_weight(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm's packed form of an int8 weight with per-row scales, built once and reused."""
    versions = (weight._version, id(scale), scale._version, id(bias), None if bias is None else bias._version)
    cached = _PACKED.get(weight)
    if cached is not None and cached[0] == versions:
        return cached[1]
    with warnings.catch_warnings():  # quantized tensors are deprecated as a user API, not as a kernel input
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(
            weight, scale.double(), torch.zeros(weight.shape[0], dtype=torch.int64), 0
        )
        packed = torch.ops.quantized.linear_prepack(qweight, bias)
    _PACKED[weight] = (versions, packed)
    return packed


@torch.library.custom_op("smashlib::int8_dynamic_linear", mutates_args=())
def int8_dynamic_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, reduce_range: bool
) -> torch.Tensor:
    """y = x W^T + b with W int8 per row, x quantized per call. An opaque op to torch.compile, which
    would otherwise split the graph at every layer around fbgemm's packed-weight object."""
    return torch.ops.quantized.linear_dynamic(x, packed_weight(weight, scale, bias), reduce_range)


@int8_dynamic_linear.register_fake
def _(x, weight, scale, bias, reduce_range):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _save_weight(ctx, inputs, output) -> None:
    _, weight, scale, _, _ = inputs
    ctx.save_for_backward(weight, scale)


def _input_gradient(ctx, grad):
    """Gradient for the input only (the int8 weight is frozen), through the de-quantized weight with the
    activation's rounding taken as identity (straight-through): what training an adapter on top needs,
    and what torch.compile asks for when any input requires grad."""
    weight, scale = ctx.saved_tensors
    return grad @ (weight.float() * scale[:, None]).to(grad.dtype), None, None, None, None


int8_dynamic_linear.register_autograd(_input_gradient, setup_context=_save_weight)


class Int8DynamicLinear(QuantizedLinear, _Float32Scales):
    """Drop-in replacement of nn.Linear (CPU) with int8 weights and dynamically quantized activations.

    Its fbgemm packed weight is cached beside the weight tensor (``packed_weight``), not in the module's
    kernel slot: the custom op torch.compile sees takes tensors, and finds the packed form from them."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        #: read once here, so torch.compile sees a constant instead of tracing the CPU query
        self.reduce_range = reduce_range()

    @classmethod
    def empty_like(cls, linear: nn.Module) -> Int8DynamicLinear:
        """An uninitialised layer shaped like ``linear`` (nn.Linear or Conv1D), to load saved weights into."""
        out_features, in_features = _weight_of(linear).shape
        return cls(in_features, out_features, bias=linear.bias is not None)

    @classmethod
    def from_linear(cls, linear: nn.Module) -> Int8DynamicLinear:
        """Quantize an nn.Linear (or a transformers Conv1D)."""
        layer = cls.empty_like(linear)
        layer.weight, layer.weight_scale = quantize_per_channel_int8(_weight_of(linear))
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = int8_dynamic_linear(x.float(), self.weight, self.weight_scale, self.bias, self.reduce_range)
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class Int8Embedding(TiedEmbedding, _Float32Scales):
    """An embedding table stored as int8 rows with one float32 scale per row; looked-up rows are
    de-quantized on the fly. Built with :meth:`tied_to` it shares the int8 matrix of a tied output head
    (its ``weight`` and ``weight_scale`` buffers are the head's tensors, saved once as tied aliases)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32, device=None,
                 padding_idx: int | None = None, scale: float | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype, padding_idx, scale)
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32, device=device))

    @classmethod
    def tied_to(cls, head: Int8DynamicLinear, dtype: torch.dtype = torch.float32, padding_idx: int | None = None,
                scale: float | None = None) -> Int8Embedding:
        """An embedding reading ``head``'s int8 weight and scales (the very same tensors)."""
        embedding = cls(head.out_features, head.in_features, dtype=dtype, device="meta", padding_idx=padding_idx,
                        scale=scale)
        embedding.weight, embedding.weight_scale = head.weight, head.weight_scale
        return embedding

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight).float() * self.weight_scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8{self.describe_scale()}"
