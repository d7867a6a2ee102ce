"""Decode attention of half-precision models, run in float32 on CPU.

PyTorch's CPU attention kernel is about 3x slower in bf16 than in float32 for the few queries of a decode
step (one query over 160 keys, SmolLM2's 9 heads on 2 cores: 132 us in bf16, 63 us cast to float32 and
back, casts included), and a decode step runs it once per block: on SmolLM2-135M about 2 ms of every
token. So models cast to bf16 or fp16 (``half``, ``gptq_compute_dtype="bfloat16"``) attend through
:func:`float32_decode_sdpa`: transformers' own SDPA attention, with the queries, keys and values of calls
of up to :data:`DECODE_QUERIES` queries cast to float32 first (the result cast back); longer calls
(prefill, where the bf16 kernel is the faster one) are left as they are. It is registered with
transformers' ``AttentionInterface`` under :data:`NAME`, so it works inside ``generate`` and under
``torch.compile`` like any attention implementation; only models whose attention is ``"sdpa"`` switch.
"""
from __future__ import annotations

import torch

#: The attention implementation's name in transformers' registries.
NAME = "smashlib_sdpa"
#: Calls with at most this many queries (decode steps, a speculative few) attend in float32.
DECODE_QUERIES = 8
_HALF = (torch.bfloat16, torch.float16)


def float32_decode_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' ``sdpa_attention_forward``, in float32 for short half-precision CPU calls."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or query.dtype not in _HALF or query.shape[-2] > DECODE_QUERIES:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    attention_mask, kwargs = _float32(attention_mask), {name: _float32(item) for name, item in kwargs.items()}
    output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return output.to(query.dtype), weights


def _float32(value):
    """Floating tensors (an additive mask, T5's position bias) in float32, to match the queries."""
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, float32_decode_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as "sdpa"


def use_float32_decode_attention(model: torch.nn.Module) -> None:
    """Switch a transformers model whose attention is ``"sdpa"`` to :data:`NAME` (in place)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not callable(getattr(model, "set_attn_implementation", None)):
        return
    _register()
    try:
        model.set_attn_implementation(NAME)
    except ValueError:  # a model that only runs the implementations it names: it keeps "sdpa"
        return
