"""Batched long-form transcription with a Whisper model: what the ifw batcher attaches to the model.

Every input is cut into chunks (smashlib.speech.chunking); chunks of all inputs of one call are pooled
and decoded ``group_size`` at a time in one batched ``generate`` (the encoder and every decoding step
then run on a batch, which is where the speed comes from on both CPU and GPU). Texts are joined per
input in order; with timestamps, each chunk's segments are shifted by the chunk's start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smashlib.speech.audio_io import TARGET_RATE, to_waveform
from smashlib.speech.chunking import plan_chunks


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcription:
    """The text of one input; ``segments`` (seconds from the input's start) when timestamps were asked for."""

    text: str
    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0

    def __str__(self) -> str:
        return self.text


@dataclass
class _Chunk:
    source: int  # index of the input it belongs to
    start: int  # first sample
    samples: np.ndarray


class IfwTranscriber:
    """Callable: ``transcriber(audio, sampling_rate=None, return_timestamps=False)``.

    ``audio`` is a path, a 1-D array (with ``sampling_rate``), a ``{"array", "sampling_rate"}`` dict, or
    a list of those; a list gives a list of :class:`Transcription`, anything else one.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, tokenizer: Any, chunk_length: float, group_size: int,
                 dtype: torch.dtype) -> None:
        self.model, self.processor, self.tokenizer = model, processor, tokenizer
        self.chunk_length, self.group_size, self.dtype = chunk_length, group_size, dtype

    def __call__(self, audio: Any, sampling_rate: int | None = None, return_timestamps: bool = False,
                 **generate_kwargs: Any) -> Transcription | list[Transcription]:
        many = isinstance(audio, (list, tuple))
        waveforms = [to_waveform(item, sampling_rate) for item in (audio if many else [audio])]
        chunks = [
            _Chunk(index, start, waveform[start:stop])
            for index, waveform in enumerate(waveforms)
            for start, stop in plan_chunks(waveform, self.chunk_length)
            if stop > start
        ]
        decoded: list[tuple[str, list[Segment]]] = []
        for first in range(0, len(chunks), self.group_size):
            decoded.extend(self._decode_group(chunks[first : first + self.group_size], return_timestamps,
                                              generate_kwargs))
        results = [Transcription("", [], waveform.shape[0] / TARGET_RATE) for waveform in waveforms]
        for chunk, (text, segments) in zip(chunks, decoded):
            result = results[chunk.source]
            result.text = f"{result.text} {text}".strip() if text else result.text
            offset = chunk.start / TARGET_RATE
            result.segments.extend(Segment(s.start + offset, s.end + offset, s.text) for s in segments)
        return results if many else results[0]

    @torch.inference_mode()
    def _decode_group(self, group: list[_Chunk], return_timestamps: bool, generate_kwargs: dict) -> list:
        features = self.processor.feature_extractor(
            [chunk.samples for chunk in group], sampling_rate=TARGET_RATE, return_tensors="pt"
        ).input_features
        device = next(self.model.parameters()).device
        tokens = self.model.generate(
            features.to(device=device, dtype=self.dtype), return_timestamps=return_timestamps, **generate_kwargs
        )
        if not isinstance(tokens, torch.Tensor):  # a GenerateOutput when the caller asked for scores
            tokens = tokens.sequences
        tokens = tokens.cpu()
        if not return_timestamps:
            return [(text.strip(), []) for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        out = []
        for chunk, row in zip(group, tokens):
            decoded = self.tokenizer.decode(row.tolist(), skip_special_tokens=True, output_offsets=True)
            length = chunk.samples.shape[0] / TARGET_RATE
            # a segment still open when the chunk ends (no closing timestamp) ends with the chunk
            segments = [
                Segment(float(o["timestamp"][0]), min(length, float(o["timestamp"][1] or length)), o["text"].strip())
                for o in decoded.get("offsets", [])
            ]
            out.append((decoded["text"].strip(), segments))
        return out
