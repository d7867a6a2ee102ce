"""GPTQ's calibration batches for Whisper: speech through the processor, transcripts as decoder inputs.

Whisper's encoder reads log-mel features and its decoder the transcript's tokens behind Whisper's prefix
(``<|startoftranscript|>`` and, for English-only models, ``<|notimestamps|>``), so its layers are calibrated
on what they see when transcribing: the attached speech rows (``audio`` and ``sentence``, as the
``audio_processing_collate`` function gives them) made into ``input_features`` by the processor's feature
extractor, and each transcript tokenized behind that prefix, padded with an attention mask. The encoder is
quantized first and the decoder calibrated on its quantized outputs (smashlib.gptq.layerwise's stacks).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from smashlib.data.calibration import data_module
from smashlib.data.catalog import AUDIO_PROCESSING
from smashlib.data.errors import DataError
from smashlib.errors import MissingComponentError


def check_speech_components(components: Any) -> None:
    """Refuse, before anything is modified, a Whisper calibration without a processor or without speech."""
    extractor = getattr(getattr(components, "processor", None), "feature_extractor", None)
    if not hasattr(extractor, "sampling_rate"):
        raise MissingComponentError(
            "gptq calibrates Whisper on speech and needs its processor: call cfg.add_processor(...) with the model's "
            "folder or Hub id (smashlib.bundled.whisper_tiny_en_path() offline)."
        )
    module = data_module(components)
    if getattr(module.entry, "name", None) != AUDIO_PROCESSING:
        raise DataError(
            f"gptq calibrates Whisper on speech with transcripts, and '{module.name}' is not speech: call "
            "cfg.add_data(...) with audio data, e.g. a datasets.Dataset with 'audio' (waveforms at 16 kHz, or file "
            "paths) and 'sentence' (the transcripts) columns."
        )


def decoder_prefix(tokenizer: Any, model: nn.Module) -> list[int]:
    """The tokens Whisper's decoder starts from: the tokenizer's prefix, or the model's start token."""
    prefix = getattr(tokenizer, "prefix_tokens", None)
    return list(prefix) if prefix else [int(model.config.decoder_start_token_id)]


def speech_calibration_batches(model: nn.Module, components: Any, n_samples: int, batch_size: int) -> list[dict]:
    """About ``n_samples`` rows of the data's train split as Whisper inputs, ``batch_size`` a batch."""
    from smashlib.speech.audio_io import to_waveform

    extractor, tokenizer = components.processor.feature_extractor, components.tokenizer
    prefix = decoder_prefix(tokenizer, model)
    longest = int(getattr(model.config, "max_target_positions", 448))
    pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    batches, seen = [], 0
    for rows in data_module(components).dataloader("train", batch_size=batch_size):
        waves = [to_waveform(audio, extractor.sampling_rate) for audio in rows["audio"]]
        features = extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="pt").input_features
        sequences = [(prefix + tokenizer(text, add_special_tokens=False)["input_ids"])[:longest] for text in rows["sentence"]]
        ids = torch.full((len(sequences), max(map(len, sequences))), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        batches.append({"input_features": features, "decoder_input_ids": ids, "decoder_attention_mask": mask})
        seen += len(waves)
        if seen >= n_samples:
            break
    if not batches:
        raise DataError("the attached speech data's train split has no rows to calibrate on.")
    return batches
