"""Cuts long audio into chunks of at most ``chunk_length`` seconds, at the quietest moment near each limit.

Why cut at silence instead of overlapping: Whisper's encoder reads a fixed 30 s window whatever it is
given, so every second of overlap is paid for in full, and transformers' pipeline (5 s overlap each
side of a 30 s window) decodes 1.5 windows per 30 s of audio and then has to merge duplicated tokens.
A cut in a pause splits no word, so the chunks are contiguous, cover every sample exactly once, and
their texts join without merging. Near each limit we look back over the last ``search_seconds`` for
the window of lowest energy (``frame_seconds`` long) and cut at its middle; if the speaker never
pauses there, that is still the quietest place, usually between two words.
"""
from __future__ import annotations

import numpy as np

SAMPLES_PER_SECOND = 16_000


def quietest_point(samples: np.ndarray, start: int, stop: int, frame: int) -> int:
    """Index in [start, stop) at the middle of the ``frame``-sample window of least energy (the latest on ties)."""
    segment = samples[start:stop].astype(np.float64)
    if segment.size <= frame:
        return stop
    energy = np.concatenate([[0.0], np.cumsum(segment * segment)])
    window = energy[frame:] - energy[:-frame]
    # latest minimum: chunks stay as long as allowed
    best = window.size - 1 - int(np.argmin(window[::-1]))
    return start + best + frame // 2


def plan_chunks(
    samples: np.ndarray,
    chunk_length: float = 30.0,
    search_seconds: float | None = None,
    frame_seconds: float = 0.1,
    rate: int = SAMPLES_PER_SECOND,
) -> list[tuple[int, int]]:
    """(start, stop) sample ranges, contiguous, covering ``samples``, each at most ``chunk_length`` s long."""
    total = samples.shape[0]
    limit = int(chunk_length * rate)
    search = int((search_seconds if search_seconds is not None else chunk_length / 6) * rate)
    frame = max(1, int(frame_seconds * rate))
    chunks, position = [], 0
    while total - position > limit:
        end = position + limit
        cut = quietest_point(samples, max(position + 1, end - search), end, frame)
        chunks.append((position, cut))
        position = cut
    chunks.append((position, total))
    return chunks
