"""ifw: a tiny Whisper built from config, a byte-level Whisper tokenizer and synthetic audio.

The tiny model's text is noise, so these tests check what does not depend on a trained model: where
chunks are cut, that batching changes no result, every input kind, the errors, the dtypes, and that a
saved model transcribes the same after loading. Real speech is in tests/test_whisper_bundled.py.
"""
from __future__ import annotations

import itertools
import wave

import numpy as np
import pytest
import torch

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.errors import (
    IncompatibleAlgorithmsError,
    MissingComponentError,
    SmashError,
    UnsupportedModelError,
)
from smashlib.speech.audio_io import resample, to_waveform
from smashlib.speech.chunking import plan_chunks
from smashlib.speech.transcriber import Transcription
from smashlib.speech.wer import word_edits, word_error_rate
from tests.tiny_models import build_tiny

RATE = 16_000


@pytest.fixture(scope="module")
def tiny_processor():
    """A WhisperProcessor whose features fit the tiny model (16 mel bins, 64 frames per 30 s window)."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {character: i for i, character in enumerate(bytes_to_unicode().values())}  # ids 0..255: the tiny vocab
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    return WhisperProcessor(WhisperFeatureExtractor(feature_size=16, hop_length=7500, n_fft=400), tokenizer)


def tiny_whisper():
    model = build_tiny("whisper")
    model.generation_config.max_new_tokens = 6  # bounded decoding: the tiny model never says end-of-text
    return model


def smashed_tiny(processor, **values):
    cfg = SmashConfig(device="cpu")
    cfg["batcher"] = "ifw"
    cfg["ifw_weight_bits"] = 32
    for name, value in values.items():
        cfg[f"ifw_{name}"] = value
    cfg.add_tokenizer(processor.tokenizer)
    cfg.add_processor(processor)
    return smash(tiny_whisper(), cfg, verbose=False)


def speech_like(seconds: float, pauses: list[float], seed: int = 0) -> np.ndarray:
    """Noise bursts (loud) with 0.4 s of near-silence centred on each of ``pauses`` (seconds)."""
    rng = np.random.default_rng(seed)
    samples = (0.3 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    for pause in pauses:
        start, stop = int((pause - 0.2) * RATE), int((pause + 0.2) * RATE)
        samples[start:stop] *= 0.001
    return samples


# ---------------------------------------------------------------------- seams
def test_chunks_are_cut_inside_pauses_and_cover_every_sample_once():
    samples = speech_like(75, pauses=[27.0, 52.5])
    chunks = plan_chunks(samples, chunk_length=30)
    assert chunks[0][0] == 0 and chunks[-1][1] == samples.size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))  # contiguous: nothing dropped, nothing twice
    cuts = [stop / RATE for _, stop in chunks[:-1]]
    assert len(cuts) == 2 and abs(cuts[0] - 27.0) < 0.2 and abs(cuts[1] - 52.5) < 0.2
    assert all(stop - start <= 30 * RATE for start, stop in chunks)


def test_without_pauses_chunks_still_fit_and_join():
    samples = speech_like(100, pauses=[])
    chunks = plan_chunks(samples, chunk_length=20)
    assert sum(stop - start for start, stop in chunks) == samples.size
    assert all(0 < stop - start <= 20 * RATE for start, stop in chunks)
    assert len(chunks) == 6  # 100 s at <= 20 s, each cut at most 20/6 s early


def test_short_audio_is_one_chunk():
    assert plan_chunks(np.zeros(5 * RATE, np.float32), chunk_length=30) == [(0, 5 * RATE)]


# ---------------------------------------------------------------------- grouping
def test_grouped_decoding_equals_one_chunk_at_a_time(tiny_processor):
    clips = [speech_like(s, pauses=[p], seed=i) for i, (s, p) in enumerate([(40, 25), (12, 6), (65, 28)])]
    grouped = smashed_tiny(tiny_processor, group_size=3)
    alone = smashed_tiny(tiny_processor, group_size=1)
    sizes = []
    generate = grouped.model.generate

    def counting_generate(features, **kwargs):
        sizes.append(features.shape[0])
        return generate(features, **kwargs)

    grouped.model.generate = counting_generate
    together = grouped.transcribe(clips, sampling_rate=RATE)
    assert sizes == [3, 3]  # 2 + 1 + 3 chunks pooled across the inputs, decoded three at a time
    assert [t.text for t in together] == [alone.transcribe(c, sampling_rate=RATE).text for c in clips]
    assert all(t.text for t in together)


# ---------------------------------------------------------------------- input kinds
def write_wav(path, samples: np.ndarray, rate: int, channels: int = 1) -> np.ndarray:
    """Write 16-bit PCM; returns the float samples the file holds (after 16-bit rounding)."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(np.repeat(pcm, channels).tobytes())
    return pcm.astype(np.float32) / 32768


def test_every_input_kind_gives_the_same_text(tiny_processor, tmp_path):
    smashed = smashed_tiny(tiny_processor)
    stored = write_wav(tmp_path / "speech.wav", speech_like(8, pauses=[4]), RATE, channels=2)
    from_file = smashed.transcribe(tmp_path / "speech.wav")
    assert isinstance(from_file, Transcription) and from_file.text and from_file.duration == 8
    assert smashed.transcribe(stored, sampling_rate=RATE).text == from_file.text
    assert smashed.transcribe(torch.from_numpy(stored), sampling_rate=RATE).text == from_file.text
    assert smashed.transcribe({"array": stored, "sampling_rate": RATE}).text == from_file.text
    assert smashed(str(tmp_path / "speech.wav")).text == from_file.text  # calling the model with audio
    listed = smashed.transcribe([str(tmp_path / "speech.wav"), stored], sampling_rate=RATE)
    assert [t.text for t in listed] == [from_file.text] * 2


def test_tensors_still_reach_the_forward(tiny_processor):
    from tests.tiny_models import tiny_inputs

    smashed = smashed_tiny(tiny_processor)
    reference = tiny_whisper()
    inputs = tiny_inputs("whisper")
    torch.testing.assert_close(smashed(**inputs).logits, reference(**inputs).logits)


def test_other_rates_are_resampled_band_limited():
    time_44k = np.arange(44_100) / 44_100
    converted = resample(np.sin(2 * np.pi * 440 * time_44k).astype(np.float32), 44_100)
    expected = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    assert converted.shape == (RATE,)
    assert np.abs(converted - expected)[100:-100].max() < 1e-3


def test_an_8_khz_wav_file_is_resampled(tmp_path):
    write_wav(tmp_path / "low.wav", np.sin(2 * np.pi * 300 * np.arange(8000) / 8000) * 0.5, 8000)
    waveform = to_waveform(tmp_path / "low.wav")
    assert waveform.shape == (RATE,) and waveform.dtype == np.float32


@pytest.mark.parametrize(
    ("audio", "kwargs", "message"),
    [
        (np.zeros(RATE, np.float32), {}, "sampling_rate=16000"),
        (np.zeros((2, RATE), np.float32), {"sampling_rate": RATE}, "must be 1-D"),
        (42, {}, "cannot transcribe a int"),
        ("/no/such/file.wav", {}, "no audio file at"),
    ],
)
def test_bad_audio_is_refused_clearly(tiny_processor, audio, kwargs, message):
    smashed = smashed_tiny(tiny_processor)
    with pytest.raises(SmashError, match=message):
        smashed.transcribe(audio, **kwargs)


def test_a_file_that_is_not_wav_names_soundfile(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "speech.flac").write_bytes(b"fLaC" + bytes(40))
    real_import = builtins.__import__

    def no_soundfile(name, *args, **kwargs):
        if name == "soundfile":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_soundfile)
    with pytest.raises(SmashError, match="pip install soundfile"):
        to_waveform(tmp_path / "speech.flac")


# ---------------------------------------------------------------------- checks before smashing
def test_missing_components_name_the_call(tiny_processor):
    cfg = SmashConfig()
    cfg["batcher"] = "ifw"
    cfg.add_tokenizer(tiny_processor.tokenizer)
    with pytest.raises(MissingComponentError, match=r"cfg\.add_processor"):
        smash(tiny_whisper(), cfg, verbose=False)
    cfg = SmashConfig()
    cfg["batcher"] = "ifw"
    cfg.add_processor(tiny_processor)
    with pytest.raises(MissingComponentError, match=r"cfg\.add_tokenizer"):
        smash(tiny_whisper(), cfg, verbose=False)


def test_a_non_whisper_model_is_refused_before_it_is_touched(tiny_processor):
    model = build_tiny("llama")
    cfg = SmashConfig()
    cfg["batcher"] = "ifw"
    cfg.add_tokenizer(tiny_processor.tokenizer)
    cfg.add_processor(tiny_processor)
    with pytest.raises(UnsupportedModelError, match="WhisperForConditionalGeneration"):
        smash(model, cfg, verbose=False)
    assert next(model.parameters()).dtype == torch.float32


def test_a_processor_without_feature_extractor_is_refused(tiny_processor):
    cfg = SmashConfig()
    cfg["batcher"] = "ifw"
    cfg.add_tokenizer(tiny_processor.tokenizer)
    cfg.add_processor(tiny_processor.tokenizer)
    with pytest.raises(SmashError, match="needs a Whisper processor"):
        smash(tiny_whisper(), cfg, verbose=False)


def test_quantizers_and_compilers_are_declared_incompatible():
    cfg = SmashConfig()
    cfg["batcher"] = "ifw"
    with pytest.raises(IncompatibleAlgorithmsError):
        cfg["quantizer"] = "torch_dynamic"


@pytest.mark.parametrize(("bits", "dtype"), [(16, torch.bfloat16), (32, torch.float32)])
def test_weight_bits_set_the_dtype(tiny_processor, bits, dtype):
    smashed = smashed_tiny(tiny_processor, weight_bits=bits)
    assert {p.dtype for p in smashed.model.parameters()} == {dtype}
    assert smashed.transcribe(speech_like(3, pauses=[]), sampling_rate=RATE).text


# ---------------------------------------------------------------------- save and load
def test_loading_applies_ifw_again_with_the_saved_processor(tiny_processor, tmp_path):
    smashed = smashed_tiny(tiny_processor, weight_bits=16, group_size=2)
    audio = speech_like(45, pauses=[20])
    before = smashed.transcribe(audio, sampling_rate=RATE).text
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert loaded.algorithms == ["ifw"]
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.transcribe(audio, sampling_rate=RATE).text == before


# ---------------------------------------------------------------------- word error rate
def test_word_error_rate_counts_edits_after_normalising():
    assert word_edits(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert word_error_rate("and mister john dashwood", "And Mr. John Dashwood.") == 0.0
    assert word_error_rate("he was not an ill disposed young man", "He was not an ill-disposed man") == 1 / 8
