"""Tiny transformers models built from configs, one per architecture family smashlib supports."""
from __future__ import annotations

import torch
import transformers


def _llama():
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, tie_word_embeddings=True,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


#: Shapes every tiny decoder shares: widths that are multiples of 16 and 32 (the int4 kernels' tiles and
#: groups), two blocks, grouped-query attention where the family has it.
_DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128}


def _gemma3():
    """Gemma 3's text model: a tied head and scaled input embeddings (Gemma3TextScaledWordEmbedding)."""
    config = transformers.Gemma3TextConfig(**_DECODER, head_dim=16, sliding_window=16, tie_word_embeddings=True)
    return transformers.Gemma3ForCausalLM(config)


def _qwen2():
    config = transformers.Qwen2Config(**_DECODER, tie_word_embeddings=True)
    return transformers.AutoModelForCausalLM.from_config(config)


def _qwen3():
    config = transformers.Qwen3Config(**_DECODER, head_dim=16, tie_word_embeddings=True)
    return transformers.AutoModelForCausalLM.from_config(config)


def _mistral():
    config = transformers.MistralConfig(**_DECODER, sliding_window=None)
    return transformers.AutoModelForCausalLM.from_config(config)


def _phi3():
    """Phi-3: fused qkv_proj and gate_up_proj."""
    config = transformers.Phi3Config(**_DECODER, pad_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(config)


def _phi():
    """Phi (phi-1/2): a partial rotary, a parallel attention + MLP block, its final norm named final_layernorm."""
    config = transformers.PhiConfig(**_DECODER, pad_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(config)


def _gemma2():
    """Gemma 2: logit soft-capping, sliding-window layers, norms after attention and MLP too."""
    config = transformers.Gemma2Config(**_DECODER, head_dim=16, sliding_window=16, tie_word_embeddings=True)
    return transformers.AutoModelForCausalLM.from_config(config)


def _gpt_neox():
    """GPT-NeoX (Pythia): blocks under gpt_neox.layers, fused query_key_value, an untied embed_out head."""
    config = transformers.GPTNeoXConfig(**_DECODER, rotary_pct=0.25, tie_word_embeddings=False)
    return transformers.AutoModelForCausalLM.from_config(config)


def _falcon():
    """Falcon: FalconLinear layers (nn.Linear subclasses), blocks under transformer.h, grouped KV heads."""
    config = transformers.FalconConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2, vocab_size=256,
        new_decoder_architecture=True, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def _bloom():
    """BLOOM: ALiBi positions (no rotary), an embedding layer norm, blocks under transformer.h."""
    config = transformers.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=256, bos_token_id=1, eos_token_id=2)
    return transformers.AutoModelForCausalLM.from_config(config)


def _mixtral():
    """Mixtral: a sparse MoE block whose experts transformers 5 fuses into 3-D gate_up_proj/down_proj weights."""
    config = transformers.MixtralConfig(**_DECODER, num_local_experts=4, num_experts_per_tok=2, pad_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(config)


def _qwen2_moe():
    """Qwen2-MoE: fused experts next to a dense shared expert gated by a one-output linear layer."""
    config = transformers.Qwen2MoeConfig(
        **_DECODER, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=64, pad_token_id=0,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def _gpt_oss():
    """GPT-OSS: transposed expert weights with biases, a clamped SwiGLU on interleaved columns, attention sinks."""
    config = transformers.GptOssConfig(
        **_DECODER, num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def _mamba():
    """Mamba: no attention; its forward reads dt_proj.weight and lm_head.weight.dtype itself."""
    config = transformers.MambaConfig(hidden_size=64, num_hidden_layers=2, vocab_size=256, state_size=8, pad_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(config)


def _llava():
    """Llava: a CLIP vision tower and projector beside a Llama under model.language_model (transformers 5)."""
    vision = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
    )
    config = transformers.LlavaConfig(text_config=transformers.LlamaConfig(**_DECODER), vision_config=vision, image_token_index=255)
    return transformers.LlavaForConditionalGeneration(config)


def _qwen2_vl():
    """Qwen2-VL: multimodal rotary positions (3-D position ids) even for text alone."""
    text = dict(model_type="qwen2_vl_text", **_DECODER, rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 4], "rope_theta": 10000.0})
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2}
    config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=255, video_token_id=254, vision_start_token_id=253)
    return transformers.Qwen2VLForConditionalGeneration(config)


def _gemma3_vlm():
    """Gemma 3 with its SigLIP vision tower: a scaled, tied embedding inside model.language_model."""
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
    )
    text = transformers.Gemma3TextConfig(**_DECODER, head_dim=16)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=255)
    return transformers.Gemma3ForConditionalGeneration(config)


def _opt():
    config = transformers.OPTConfig(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
        max_position_embeddings=128, word_embed_proj_dim=64, pad_token_id=0,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def _gpt2():
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128, bos_token_id=1, eos_token_id=2
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def _bert():
    config = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=256,
        max_position_embeddings=128, num_labels=3,
    )
    return transformers.AutoModelForSequenceClassification.from_config(config)


def _t5():
    config = transformers.T5Config(
        d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, vocab_size=256,
        decoder_start_token_id=0, pad_token_id=0,
    )
    return transformers.AutoModelForSeq2SeqLM.from_config(config)


def _bart():
    """BART: an encoder-decoder whose head and both stacks' embeddings share one table; learned positions."""
    config = transformers.BartConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=256, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
    )
    return transformers.AutoModelForSeq2SeqLM.from_config(config)


def _whisper():
    config = transformers.WhisperConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=256, num_mel_bins=16, max_source_positions=32,
        max_target_positions=64, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1,
    )
    return transformers.WhisperForConditionalGeneration(config)


TINY_MODEL_BUILDERS = {"llama": _llama, "gpt2": _gpt2, "bert": _bert, "t5": _t5, "whisper": _whisper}
#: Decoder families the weight quantizers claim, beyond the models above (tests/test_families.py).
FAMILY_BUILDERS = {
    "gemma3": _gemma3, "gemma2": _gemma2, "qwen2": _qwen2, "qwen3": _qwen3, "mistral": _mistral, "phi3": _phi3,
    "phi": _phi, "opt": _opt, "gpt_neox": _gpt_neox, "falcon": _falcon, "bloom": _bloom,
    "mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "gpt_oss": _gpt_oss, "mamba": _mamba,
    "llava": _llava, "qwen2_vl": _qwen2_vl, "gemma3_vlm": _gemma3_vlm, "bart": _bart,
}


def build_tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return {**TINY_MODEL_BUILDERS, **FAMILY_BUILDERS}[name]().eval()


def tiny_inputs(name: str, batch: int = 2, length: int = 8) -> dict[str, torch.Tensor]:
    """Inputs as a tokenizer or processor would give them, for one forward pass of ``build_tiny(name)``."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 256, (batch, length), generator=generator)
    if name == "whisper":
        return {
            "input_features": torch.randn(batch, 16, 64, generator=generator),
            "decoder_input_ids": ids[:, :4],
        }
    if name in ("t5", "bart"):
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": ids[:, :4]}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def tiny_tokenizer(vocab_size: int = 256):
    """A real BPE tokenizer with the tiny models' vocabulary size, trained in milliseconds on the English
    text every Python ships (pydoc_data), so tests that need a tokenizer never download one."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False
    )
    tokenizer.train_from_iterator(list(topics.values()), trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
