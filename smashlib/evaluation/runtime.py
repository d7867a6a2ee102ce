"""How the metrics call a model: find its device, run it, read its logits, wait for the GPU.

Kept in one place so every metric runs a model the same way (a latency and a perplexity of the
same model are then two views of the same forward pass).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch


def unwrap(model: Any) -> torch.nn.Module:
    """The plain module inside a SmashedModel (or the model itself)."""
    from smashlib.model import SmashedModel

    return model.model if isinstance(model, SmashedModel) else model


def model_device(model: Any) -> torch.device:
    """The device of the model's first tensor (CPU for a model without any)."""
    module = unwrap(model)
    for tensor in module.parameters():
        if tensor.device.type != "meta":
            return tensor.device
    for tensor in module.buffers():
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """A timestamp taken after the device has finished its queued work."""
    synchronize(device)
    return time.perf_counter()


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without ``labels``: a forward pass given labels also computes a loss we do not time."""
    return {k: v for k, v in batch.items() if k != "labels"}


def forward(model: Any, batch: Mapping[str, Any]) -> Any:
    """One forward pass without autograd (``no_grad`` rather than ``inference_mode``: some quantized
    tensor subclasses refuse inference tensors)."""
    with torch.no_grad():
        return model(**batch)


def logits_of(outputs: Any) -> torch.Tensor | None:
    """The logits of a model's output (a ModelOutput, a tuple or a tensor), or None when it has none."""
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    return None


def config_of(model: Any) -> Any:
    return getattr(unwrap(model), "config", None)


def is_encoder_decoder(model: Any) -> bool:
    return bool(getattr(config_of(model), "is_encoder_decoder", False))


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` predicts the next token of its input (what perplexity is defined on)."""
    if is_encoder_decoder(model):
        return False
    name = type(unwrap(model)).__name__
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
            return True
    except ImportError:  # an older transformers: fall back on the naming convention
        pass
    return name.endswith(("ForCausalLM", "LMHeadModel"))


def can_generate(model: Any) -> bool:
    module = unwrap(model)
    check = getattr(module, "can_generate", None)
    return bool(check()) if callable(check) else False


def position_mask(model: Any, batch: Mapping[str, Any], logits: torch.Tensor) -> torch.Tensor:
    """Which positions of ``logits`` (all but the last dimension) hold real predictions, not padding."""
    shape = logits.shape[:-1]
    mask = None
    if logits.dim() == 3:
        key = "decoder_attention_mask" if is_encoder_decoder(model) else "attention_mask"
        mask = batch.get(key)
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(shape):
        return mask.to(logits.device).bool()
    return torch.ones(shape, dtype=torch.bool, device=logits.device)
