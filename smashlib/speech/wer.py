"""Word error rate: (substitutions + deletions + insertions) / reference words, after Whisper's English normaliser.

Both texts go through transformers' ``EnglishTextNormalizer`` (lower case, punctuation dropped,
"Mr." and "mister" alike, hyphenated words split, numbers spelled one way), as Whisper's own
evaluations do, so a WER measures words and not spelling conventions. The edit distance is the
classic dynamic programme over words, one row at a time.
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalize(text: str) -> list[str]:
    return _normalizer()(text).split()


def word_edits(reference: list[str], hypothesis: list[str]) -> int:
    """The least number of word substitutions, deletions and insertions turning ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER in [0, inf) of ``hypothesis`` against ``reference`` (0.05 means 5 errors per 100 reference words)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return float(bool(hyp))
    return word_edits(ref, hyp) / len(ref)
