"""Int8DynamicLinear and Int8Embedding: int8 weights with per-row fp32 scales, on PyTorch's CPU int8 kernel.

Int8DynamicLinear runs fbgemm's ``quantized::linear_dynamic``: the activation is quantized per call
(one scale per tensor), multiplied in int8 and rescaled; measured here 3-15x faster than an fp32
matrix-vector product. Int8Embedding is the input-embedding side of the same int8 matrix, for models
whose output head is tied to their input embeddings: the two modules then share one int8 weight and
its scales, as they shared one fp32 weight before.

The int8 weight and its scales are ordinary buffers, so the state dict is plain tensors (int8 in
safetensors); the kernel's packed form is built on first use and never saved. The scales and bias stay
float32 when the model is cast to bf16/fp16 (the kernel computes in fp32, and a bf16 scale would keep
only 3 significant digits); the outputs follow the dtype of the inputs.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import nn

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
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return not (callable(is_vnni) and is_vnni())


class _Float32Scales(nn.Module):
    """Keeps FLOAT32_BUFFERS in float32 through ``.to(dtype)``, ``.half()`` and the like (moves still apply)."""

    def _apply(self, fn, recurse=True):
        self._packed = None  # moving or casting invalidates any packed copy
        kept = {name: self._buffers[name] for name in FLOAT32_BUFFERS if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            converted = self._buffers[name]
            if converted.dtype != original.dtype:  # a cast: move the exact float32 values instead
                self._buffers[name] = original.to(converted.device)
        return self


class Int8DynamicLinear(_Float32Scales):
    """Drop-in replacement of nn.Linear (CPU) with int8 weights and dynamically quantized activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        self._packed = None
        self._register_load_state_dict_pre_hook(self._forget_packed)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8DynamicLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.weight, layer.weight_scale = quantize_per_channel_int8(linear.weight)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer

    def _forget_packed(self, *args, **kwargs) -> None:
        self._packed = None

    def _packed_weight(self):
        if self._packed is None:
            with warnings.catch_warnings():  # quantized tensors are deprecated as a user API, not as a kernel input
                warnings.simplefilter("ignore", UserWarning)
                qweight = torch._make_per_channel_quantized_tensor(
                    self.weight, self.weight_scale.double(), torch.zeros(self.out_features, dtype=torch.int64), 0
                )
                self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        out = torch.ops.quantized.linear_dynamic(x.float(), self._packed_weight(), reduce_range())
        return out if dtype == torch.float32 else out.to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class Int8Embedding(_Float32Scales):
    """An embedding table stored as int8 rows with one float32 scale per row; looked-up rows are
    de-quantized on the fly. Built with :meth:`tied_to` it shares the int8 matrix of a tied output head."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        #: dtype of the rows handed to the model (the embedding's dtype before quantization); follows casts.
        self.output_dtype = dtype
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32, device=device))
        self._packed = None

    @classmethod
    def tied_to(cls, head: Int8DynamicLinear, dtype: torch.dtype = torch.float32) -> Int8Embedding:
        """An embedding reading ``head``'s int8 weight and scales (the very same tensors)."""
        embedding = cls(head.out_features, head.in_features, dtype=dtype, device="meta")
        embedding.weight, embedding.weight_scale = head.weight, head.weight_scale
        return embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.weight).float() * self.weight_scale[ids].unsqueeze(-1)
        return rows.to(self.output_dtype)

    def _apply(self, fn, recurse=True):
        probe = fn(torch.zeros((), dtype=self.output_dtype))  # a cast such as .half() changes the output dtype
        if probe.is_floating_point():
            self.output_dtype = probe.dtype
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"
