"""LoRA adapters for the recoverer: PEFT's over float layers (then merged), a small one of ours over quantized ones.

Over ``nn.Linear`` / ``Conv1D`` (pruned, fp32 or bf16 weights) PEFT's LoRA layers are injected, trained and
merged into the weights: the result has no adapter left, no extra cost at run time, and saves as a plain
model. PEFT does not know smashlib's quantized layers (packed GPTQ, int8...), and merging a float update
into integer weights would re-quantize it; over those :class:`QuantizedLoRA` keeps the low-rank update
beside the frozen quantized layer, and it saves and loads with the model (its ``lora_A``/``lora_B`` are
ordinary parameters; the recoverer's ``prepare_for_loading`` wraps the same layers again).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from smashlib.modules import replace_module
from smashlib.targets import is_linear

ADAPTER_NAME = "smashlib"


def is_quantized_linear(module: nn.Module) -> bool:
    """A layer that behaves like a Linear but is not one: smashlib's quantized layers (in/out features, no
    child layers, not an embedding)."""
    return (
        not is_linear(module)
        and not isinstance(module, (nn.Embedding, QuantizedLoRA))
        and isinstance(getattr(module, "in_features", None), int)
        and isinstance(getattr(module, "out_features", None), int)
        and next(module.children(), None) is None
    )


def adaptable(module: nn.Module) -> bool:
    return is_linear(module) or is_quantized_linear(module)


class QuantizedLoRA(nn.Module):
    """``base(x) + scaling * lora_B(lora_A(x))`` over a frozen quantized layer; B starts at zero (no change)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        device = next((t.device for t in (*base.parameters(), *base.buffers())), None)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=device)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=device)
        self.scaling = alpha / rank
        if not self.lora_A.weight.is_meta:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        update = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scaling
        return out + update.to(out.dtype)


class _GradientThroughQuantized(torch.autograd.Function):
    """The quantized layer's output, with the input gradient computed from its de-quantized weight: int4/int8
    CPU kernels have no derivative, and adapters before such a layer need the gradient that crosses it."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer, ctx.dtype = layer, x.dtype
        with torch.no_grad():
            return layer.forward_without_gradient(x)

    @staticmethod
    def backward(ctx, grad):
        weight = ctx.layer.dequantize(torch.float32)  # (out, in), as nn.Linear holds it
        return (grad.float() @ weight).to(ctx.dtype), None


@contextlib.contextmanager
def gradients_through_quantized(model: nn.Module) -> Iterator[None]:
    """Within the block, gradients flow through every quantized layer that can de-quantize its weight."""
    patched = [m for m in model.modules() if is_quantized_linear(m) and callable(getattr(m, "dequantize", None))]
    for module in patched:
        module.forward_without_gradient = module.forward
        module.forward = lambda x, layer=module: _GradientThroughQuantized.apply(x, layer)
    try:
        yield
    finally:
        for module in patched:
            del module.forward, module.forward_without_gradient


def wrap_quantized(model: nn.Module, names: Sequence[str], rank: int, alpha: float) -> list[nn.Parameter]:
    """Put a QuantizedLoRA over each named layer; returns the new trainable parameters."""
    parameters: list[nn.Parameter] = []
    for name in names:
        wrapper = QuantizedLoRA(model.get_submodule(name), rank, alpha)
        replace_module(model, name, wrapper)
        parameters.extend(wrapper.lora_A.parameters())
        parameters.extend(wrapper.lora_B.parameters())
    return parameters


def inject_peft(model: nn.Module, names: Sequence[str], rank: int, alpha: float) -> list[nn.Parameter]:
    """PEFT LoRA layers over the named nn.Linear / Conv1D layers; returns their trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(names), bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    return [p for name, p in model.named_parameters() if "lora_" in name and ADAPTER_NAME in name]


def merge_peft(model: nn.Module) -> int:
    """Merge every PEFT LoRA layer into its base layer and put the base layer back; returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in merged:
        with torch.no_grad():
            module.merge(safe_merge=True)
        base = module.get_base_layer()
        for p in base.parameters():
            p.requires_grad_(False)
        replace_module(model, name, base)
    return len(merged)
