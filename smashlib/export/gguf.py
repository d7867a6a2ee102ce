"""``format="gguf"``: one file llama.cpp runs, with GPTQ's calibrated weights on its Q8_0/Q4_0/Q4_1 grids.

What is written, as llama.cpp's own ``convert_hf_to_gguf.py`` writes it for the Llama architecture:

- architecture metadata (``llama.*``: blocks, widths, heads, rope base and dimensions, RMS-norm epsilon),
- the tokenizer: a GPT-2-style byte-level BPE (``tokenizer.json``), its tokens, token types and
  merges, special token ids, add-bos and chat template (gguf.SpecialVocab), and the pre-tokenizer
  name llama.cpp picks its splitting regex by (``tokenizer_pre=``; recognised for SmolLM2),
- tensors under llama.cpp's names, q/k rows permuted into llama.cpp's rotary layout, packed layers
  as their exact blocks (smashlib.export.gguf_blocks), everything else F32 (or ``float_type="f16"``).

Supported (:data:`ARCHITECTURES`): Llama (Llama 1/2/3 and 3.1-3.3 with their ``llama3`` rope scaling, written
as llama.cpp's ``rope_freqs`` tensor; SmolLM, SmolLM2, TinyLlama, ...), Mistral (written as Llama, as llama.cpp's
converter does), Qwen2/2.5 (attention biases, rotary on halves: q/k rows kept in order) and Qwen3 (per-head
q/k norms), with BPE tokenizers, quantized by gptq on a ``gptq_grid``, or not quantized at all (an F32/F16
file: the input llama.cpp's own quantizer wants). Anything else is refused before a byte is written, naming
what is supported.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smashlib.errors import UnsupportedExportError
from smashlib.export.checks import STRUCTURAL, refuse_algorithms, unwrap
from smashlib.export.gguf_blocks import block_bytes, block_type
from smashlib.layers.linear_like import is_linear_like
from smashlib.layers.packed_int import PackedEmbedding, PackedLinear

FORMAT = "gguf"


@dataclass(frozen=True)
class Architecture:
    """How llama.cpp's converter writes one transformers ``model_type``."""

    gguf_name: str  #: llama.cpp's architecture: the metadata prefix and the tensor-name map
    interleaved_rotary: bool  #: llama.cpp's "llama" rope pairs adjacent rows, so q/k rows are reordered; Qwen's pairs halves, as HF does
    attention_bias: bool  #: q/k/v biases (Qwen2), which the file must hold


ARCHITECTURES = {
    "llama": Architecture("llama", True, False),
    "mistral": Architecture("llama", True, False),
    "qwen2": Architecture("qwen2", False, True),
    "qwen3": Architecture("qwen3", False, False),  # its q_norm / k_norm are norms: written like the others
}
SUPPORTED_MODEL_TYPES = tuple(ARCHITECTURES)
#: Rotary types that only rescale frequencies, which llama.cpp reads as per-frequency factors (rope_freqs).
FREQUENCY_SCALED_ROPE = ("llama3", "linear")

#: the JSON of a tokenizer.json pre_tokenizer -> the name llama.cpp knows it by (tokenizer.ggml.pre).
#: llama.cpp itself tells them apart by hashing a tokenized probe text; these are the ones checked here.
#: (SmolLM2's own tokenizer.json has Digits + ByteLevel: "smollm".)
KNOWN_PRE_TOKENIZERS = {
    json.dumps(
        {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        sort_keys=True,
    ): "smollm",
    # plain GPT-2 byte-level splitting (e.g. SmolLM2's tokenizer as transformers rebuilds it from a GGUF);
    # llama.cpp names it "gpt-2" and refuses "gpt2" ("unknown pre-tokenizer type", llama.cpp 0.3.36)
    json.dumps({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, sort_keys=True): "gpt-2",
}

#: file_type values (gguf.LlamaFileType) for the block type most matrices use
FILE_TYPES = {"q8_0": 7, "q4_0": 2, "q4_1": 3, "f32": 0, "f16": 1}


def check_model(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedExportError(
            f"format='gguf' writes the Llama, Mistral, Qwen2 and Qwen3 architectures (model_type in "
            f"{list(SUPPORTED_MODEL_TYPES)}: Llama 1-3, SmolLM2, TinyLlama, Qwen2.5, ...); this model is "
            f"{model_type or type(model).__name__}. Save it with format='smashlib' or 'compressed-tensors' instead."
        )
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default" and rope_type not in FREQUENCY_SCALED_ROPE:
        raise UnsupportedExportError(
            f"format='gguf' writes plain, linear and Llama 3 rotary embeddings; this model uses rope_type={rope_type!r}, "
            "which this exporter does not write yet."
        )
    if rope_type != "default" and float(getattr(rotary_module(model), "attention_scaling", 1.0)) != 1.0:
        raise UnsupportedExportError(f"format='gguf': rope_type={rope_type!r} with an attention scaling is not written yet.")
    biased = getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
    if biased and not ARCHITECTURES[model_type].attention_bias:
        raise UnsupportedExportError(
            f"format='gguf' writes {model_type} layers without biases; this model has attention or MLP biases."
        )
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()) or (
        model_type == "qwen2" and getattr(config, "use_sliding_window", False)
    ):
        raise UnsupportedExportError(
            f"format='gguf': llama.cpp's {ARCHITECTURES[model_type].gguf_name} attends over the whole context, and this "
            "model has sliding-window attention layers."
        )
    return config


def head_dim_of(config: Any) -> int:
    """The attention head size: the config's ``head_dim`` (Qwen3, pruned models), else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rotary_module(model: nn.Module) -> nn.Module | None:
    return getattr(getattr(model, "model", None), "rotary_emb", None)


def rope_frequency_factors(model: nn.Module, config: Any) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs``: per rotary frequency, what the model divides the plain frequency by
    (Llama 3's smoothed scaling, or linear scaling's constant factor); None for plain rotary embeddings.
    Read off the model's own ``inv_freq``, so the file rotates exactly as transformers does."""
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") == "default":
        return None
    head_dim = head_dim_of(config)
    base = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    plain = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return (plain / rotary_module(model).inv_freq.double()).float().numpy()


def rotary_row_order(rows: int, heads: int) -> torch.Tensor:
    """The row order convert_hf_to_gguf gives q/k: HF's rotate-half halves interleaved, per head."""
    index = torch.arange(rows)
    return index.reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(rows)


def _tensor_name(name_map: Any, hf_name: str) -> str:
    name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise UnsupportedExportError(f"{hf_name} has no place in llama.cpp's Llama tensors.")
    return name


def _float_array(tensor: torch.Tensor, float_type: str) -> np.ndarray:
    if tensor.dim() == 1 or float_type == "f32":  # norms stay F32, as llama.cpp wants them
        return tensor.detach().float().numpy()
    return tensor.detach().half().numpy()


def _weights(model: nn.Module, config: Any, float_type: str):
    """(gguf name, array, raw type or None, block type) for every tensor llama.cpp reads."""
    import gguf

    architecture = ARCHITECTURES[config.model_type]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.gguf_name.upper()], config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    rows_of = {"q_proj": heads, "k_proj": kv_heads} if architecture.interleaved_rotary else {}
    factors = rope_frequency_factors(model, config)
    if factors is not None:
        yield "rotary_emb", gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors, None
    for module_name, module in model.named_modules():
        if isinstance(module, PackedEmbedding):
            continue  # the table is the packed head's: written once, as token_embd (see _resolve_tied)
        if isinstance(module, PackedLinear):
            kind = block_type(module_name, module)
            short = module_name.rsplit(".", 1)[-1]
            order = rotary_row_order(module.out_features, rows_of[short]) if short in rows_of else None
            yield module_name, _tensor_name(name_map, f"{module_name}.weight"), block_bytes(module, kind, order), kind
            yield from _bias(name_map, module_name, module, order)
            continue
        if not (is_linear_like(module) or isinstance(module, nn.Embedding) or module_name.endswith("norm")):
            if any(True for _ in module.parameters(recurse=False)):
                raise UnsupportedExportError(f"{module_name} ({type(module).__name__}) has no GGUF representation here.")
            continue
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        short = module_name.rsplit(".", 1)[-1]
        data = weight.detach()
        if short in rows_of:
            data = data[rotary_row_order(data.shape[0], rows_of[short])]
        yield module_name, _tensor_name(name_map, f"{module_name}.weight"), _float_array(data, float_type), None
        if is_linear_like(module):
            yield from _bias(name_map, module_name, module, rotary_row_order(data.shape[0], rows_of[short]) if short in rows_of else None)


def _bias(name_map: Any, module_name: str, module: nn.Module, order: torch.Tensor | None):
    """A layer's bias as F32 (Qwen2's q/k/v), its rows in the weight's order."""
    bias = getattr(module, "bias", None)
    if bias is None:
        return
    data = bias.detach().float()
    yield module_name, _tensor_name(name_map, f"{module_name}.bias"), (data if order is None else data[order]).numpy(), None


def _resolve_tied(entries: list, model: nn.Module) -> list:
    """A packed head tied to the embedding is llama.cpp's token_embd with no separate output tensor;
    an unquantized tied head is simply not written (llama.cpp falls back to token_embd)."""
    names = {gguf_name for _, gguf_name, _, _ in entries}
    tied = any(isinstance(m, PackedEmbedding) for m in model.modules())
    if tied:
        return [(h, "token_embd.weight" if g == "output.weight" else g, a, k) for h, g, a, k in entries]
    if bool(getattr(model.config, "tie_word_embeddings", False)) and "token_embd.weight" in names:
        return [entry for entry in entries if entry[1] != "output.weight"]
    return entries


def tokenizer_pre(tokenizer: Any, given: str | None) -> str:
    if given is not None:
        return given
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = json.loads(backend.to_str()).get("pre_tokenizer") if backend is not None else None
    name = KNOWN_PRE_TOKENIZERS.get(json.dumps(pre, sort_keys=True))
    if name is None:
        warnings.warn(
            "format='gguf': this tokenizer's pre-tokenizer is not one smashlib recognises, so llama.cpp will split "
            "text with its 'default' rules; pass tokenizer_pre='llama-bpe' (Llama 3), 'qwen2', ... to name it.",
            stacklevel=3,
        )
        return "default"
    return name


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types by id, as convert_hf_to_gguf's get_vocab_base lists them."""
    import gguf

    vocab = tokenizer.get_vocab()
    reverse = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(max(vocab_size, len(vocab))):
        if index not in reverse:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, pre: str | None) -> None:
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    model_type = json.loads(backend.to_str())["model"]["type"] if backend is not None else None
    if model_type != "BPE":
        raise UnsupportedExportError(
            f"format='gguf' writes byte-level BPE tokenizers (tokenizer.json with a BPE model: SmolLM2, Llama 3, ...); "
            f"this tokenizer is {model_type or type(tokenizer).__name__}."
        )
    tokens, types = vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre(tokenizer, pre))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
        special.add_to_gguf(writer, quiet=True)


def write_architecture(writer: Any, config: Any, file_type: int) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = head_dim_of(config)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:  # pruned heads (head_dim kept): llama.cpp derives it otherwise
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def save_gguf(
    smashed: Any,
    path: str | os.PathLike,
    tokenizer: Any = None,
    tokenizer_pre: str | None = None,
    float_type: str = "f32",
) -> Path:
    """Write ``smashed`` (a gptq result on a ``gptq_grid``, or an unquantized Llama model) to ``path``.

    ``tokenizer``: defaults to the one attached to the SmashConfig (a plain model needs it given).
    ``float_type``: "f32" (exact) or "f16" for the matrices that are not quantized.
    """
    import gguf

    model, algorithms = unwrap(smashed)
    refuse_algorithms(
        algorithms, ("gptq", *STRUCTURAL), FORMAT,
        "Re-smash with quantizer='gptq' and gptq_grid='q8_0', 'q4_0' or 'q4_1' (llama.cpp's block grids).",
    )
    if float_type not in ("f32", "f16"):
        raise UnsupportedExportError(f"float_type={float_type!r}: one of 'f32', 'f16'.")
    config = check_model(model)
    if tokenizer is None:
        tokenizer = getattr(getattr(getattr(smashed, "smash_config", None), "components", None), "tokenizer", None)
    if tokenizer is None:
        raise UnsupportedExportError(
            "format='gguf' embeds the tokenizer and none is attached: cfg.add_tokenizer(...) before smash, or pass "
            "save_pretrained(..., format='gguf', tokenizer=tokenizer)."
        )
    entries = _resolve_tied(list(_weights(model, config, float_type)), model)  # every check runs before writing
    kinds = Counter(kind for _, _, _, kind in entries if kind is not None)
    file_type = FILE_TYPES[kinds.most_common(1)[0][0] if kinds else float_type]

    target = Path(path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(staging, ARCHITECTURES[config.model_type].gguf_name)
        write_architecture(writer, config, file_type)
        write_tokenizer(writer, tokenizer, config.vocab_size, tokenizer_pre)
        raw_types = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
                     "q4_1": gguf.GGMLQuantizationType.Q4_1}
        for _, gguf_name, array, kind in entries:
            writer.add_tensor(gguf_name, array, raw_dtype=raw_types.get(kind))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return target
