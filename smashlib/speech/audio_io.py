"""Turns what a user hands the transcriber (a file, an array and its rate, a datasets row) into 16 kHz mono float32.

Files: WAV (PCM 8/16/24/32-bit integer or 32/64-bit float, any channel count) through the standard
library's ``wave`` module, so speech files need no audio package; any other format (FLAC, OGG, MP3 as
far as libsndfile reads it) through ``soundfile`` when it is installed. Other rates are resampled in
the frequency domain (the whole signal's FFT cut or padded to the new length): band-limited and exact
for a finite signal, with nothing to install.
"""
from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

from smashlib.errors import SmashError

TARGET_RATE = 16_000
#: WAVE_FORMAT_IEEE_FLOAT, which the stdlib ``wave`` module refuses; read by hand below.
_FLOAT_FORMAT = 3


def resample(samples: np.ndarray, rate: int, target: int = TARGET_RATE) -> np.ndarray:
    """``samples`` (1-D) from ``rate`` to ``target`` Hz, band-limited (FFT truncation or zero-padding)."""
    if rate == target or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    length = round(samples.size * target / rate)
    spectrum = np.fft.rfft(samples.astype(np.float64))
    kept = length // 2 + 1
    if kept <= spectrum.size:
        spectrum = spectrum[:kept]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(kept - spectrum.size, dtype=spectrum.dtype)])
    return (np.fft.irfft(spectrum, n=length) * (length / samples.size)).astype(np.float32)


def _mono(samples: np.ndarray) -> np.ndarray:
    return samples if samples.ndim == 1 else samples.mean(axis=1)


def _pcm_to_float(raw: bytes, width: int, channels: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        values = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128) / 128
    elif width == 3:  # 24-bit: widen each little-endian triple to int32
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = ((triples[:, 0] | triples[:, 1] << 8 | triples[:, 2] << 16) << 8 >> 8).astype(np.float32) / 2**23
    else:
        dtype = {2: "<i2", 4: "<i4"}[width]
        values = np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    return values.reshape(-1, channels)


def _read_float_wav(path: Path) -> tuple[np.ndarray, int]:
    """A WAVE_FORMAT_IEEE_FLOAT file: walk the RIFF chunks for 'fmt ' and 'data'."""
    data = path.read_bytes()
    offset, fmt, samples = 12, None, None
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        body = data[offset + 8 : offset + 8 + size]
        if chunk == b"fmt ":
            fmt = body
        elif chunk == b"data":
            samples = body
        offset += 8 + size + (size & 1)
    if fmt is None or samples is None:
        raise SmashError(f"{path} is a WAV file without a fmt or data chunk: the file is damaged.")
    channels = int.from_bytes(fmt[2:4], "little")
    rate = int.from_bytes(fmt[4:8], "little")
    bits = int.from_bytes(fmt[14:16], "little")
    dtype = {32: "<f4", 64: "<f8"}[bits]
    return np.frombuffer(samples, dtype=dtype).astype(np.float32).reshape(-1, channels), rate


def read_audio_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sampling rate) of an audio file."""
    path = Path(path)
    if not path.is_file():
        raise SmashError(f"no audio file at {path}: pass an existing .wav file (or an array with sampling_rate=).")
    with open(path, "rb") as handle:
        header = handle.read(36)
    if header[:4] == b"RIFF" and header[8:12] == b"WAVE":
        if int.from_bytes(header[20:22], "little") == _FLOAT_FORMAT:
            samples, rate = _read_float_wav(path)
            return _mono(samples), rate
        with wave.open(str(path), "rb") as reader:
            raw = reader.readframes(reader.getnframes())
            samples = _pcm_to_float(raw, reader.getsampwidth(), reader.getnchannels())
            return _mono(samples), reader.getframerate()
    try:
        import soundfile
    except ImportError:
        raise SmashError(
            f"{path} is not a WAV file; smashlib reads WAV with the standard library and other formats with "
            "soundfile: pip install soundfile, or convert it (ffmpeg -i in.mp3 -ar 16000 out.wav)."
        ) from None
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return _mono(samples), rate


def to_waveform(audio: Any, sampling_rate: int | None = None) -> np.ndarray:
    """16 kHz mono float32 samples from a path, a 1-D array/tensor with ``sampling_rate``, or a
    ``{"array", "sampling_rate"}`` dict (a decoded datasets row)."""
    if isinstance(audio, (str, os.PathLike)):
        samples, rate = read_audio_file(audio)
    elif isinstance(audio, dict) and "array" in audio:
        samples, rate = audio["array"], audio.get("sampling_rate", sampling_rate)
    elif hasattr(audio, "__array__"):
        samples, rate = audio, sampling_rate
    else:
        raise SmashError(
            f"cannot transcribe a {type(audio).__name__}: pass a path to a .wav file, a 1-D array with "
            "sampling_rate=, a {'array', 'sampling_rate'} dict, or a list of them."
        )
    if rate is None:
        raise SmashError(
            "an audio array needs its sampling rate: call transcribe(array, sampling_rate=16000) (it is resampled "
            "to 16 kHz), or pass {'array': ..., 'sampling_rate': ...}."
        )
    if hasattr(samples, "detach"):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise SmashError(
            f"an audio array must be 1-D (mono samples); got shape {tuple(samples.shape)}: average the channels "
            "first (array.mean(axis=0) for channels-first)."
        )
    return resample(samples, int(rate))
