"""The block layers a mixed-precision GPTQ recipe keeps at 8 bits: llama.cpp's choice for its "_M" types.

At 4 bits, SmolLM2-135M calibrated on one kind of text lost 5.5% perplexity on that kind and 13.6-14.5% on
others; llama.cpp's Q4_K_M, which is 4-bit K-quants with some tensors at 6 bits, loses less on some kinds
at a larger size. Which tensors get the bits is llama.cpp's rule (``use_more_bits`` in its
``llama-quant.cpp``): attention's value projection and the MLP's down projection, the two layers that
write into the residual stream through nothing but a sum (the value's error passes through attention's
averaging, the down projection's straight out of the MLP), in the first and last eighth of the blocks and
in every third block between them: 14 of SmolLM2's 30 blocks, about 14% of the block weights.
The layer names per family are those of smashlib.gptq.layerwise's layouts.
"""
from __future__ import annotations

import re

from torch import nn

from smashlib.gptq.layerwise import Layout, stack_layer_names

#: Endings of the full names of the sensitive layers: Llama-like and OPT (v_proj, down_proj / fc2), GPT-2
#: (mlp.c_proj; its value projection is fused into c_attn with the queries and keys, which stay as they are),
#: GPT-NeoX and Falcon (mlp.dense_4h_to_h; their values are fused into query_key_value likewise).
SENSITIVE_ENDINGS = (".self_attn.v_proj", ".mlp.down_proj", ".fc2", ".mlp.c_proj", ".mlp.dense_4h_to_h")
#: A MoE block's expert down projections (split by smashlib.layers.expert_linears): llama.cpp's rule counts
#: its ffn_down_exps tensors as ffn_down, so do we. Its shared expert ends in .mlp.shared_expert.down_proj.
#: T5's self-attention values and MLP output (``wo``, kept in float unless included), BERT's and RoBERTa's
#: (``attention.self.value``; the block's ``output.dense``, not the attention's).
OTHER_SENSITIVE = re.compile(
    r"\.experts\.down_proj\.\d+$|\.shared_experts?\.down_proj$|\.SelfAttention\.v$|\.DenseReluDense\.wo$"
    r"|\.attention\.self\.value$|\.layer\.\d+\.output\.dense$"
)


def more_bits(index: int, blocks: int) -> bool:
    """llama.cpp's use_more_bits(i_layer, n_layers), with its integer divisions."""
    eighth = blocks // 8
    return index < eighth or index >= 7 * blocks // 8 or (index - eighth) % 3 == 2


def sensitive_layer_names(model: nn.Module, layout: Layout) -> set[str]:
    """Full names of the block layers that the rule keeps at more bits (blocks counted within each stack:
    an encoder-decoder's encoder and decoder each have their first and last eighth)."""
    return {
        name for per_block in stack_layer_names(model, layout)
        for index, names in enumerate(per_block) if more_bits(index, len(per_block))
        for name in names if name.endswith(SENSITIVE_ENDINGS) or OTHER_SENSITIVE.search(name)
    }
