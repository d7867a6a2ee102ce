"""gptq on Whisper tiny.en: word error rates on real speech of two kinds, and the weights' size.

Calibration is the speech of one kind only, Debian pocketsphinx-testdata's five "cards" clips (spoken
card names, about a second each); the word error rate is measured on its five LibriVox clips (read
literature, 5-7 s each: a kind the calibration never heard) and, for reference, on the cards clips
themselves (the calibration's own audio). Greedy decoding, one clip at a time, the model's generation
config. Every recipe in one run, each compared to fp32 in the same process.

    .venv/bin/python benchmarks/whisper_gptq.py            # about 3 minutes on 2 cores; fetches the clips once
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

TRANSCRIPT_LINE = re.compile(r"<s>(.*)</s>\s*\((.+)\)")
RECIPES = {
    "fp32": {},
    "gptq 8-bit per row": {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1},
    "gptq 4-bit g32": {"quantizer": "gptq", "gptq_weight_bits": 4, "gptq_group_size": 32},
    "round to nearest 4-bit g32": {"quantizer": "gptq", "gptq_method": "rtn", "gptq_weight_bits": 4, "gptq_group_size": 32},
    "gptq 4-bit g32, sensitive layers 8-bit": {"quantizer": "gptq", "gptq_sensitive_layers_precision": "int8"},
}


def clips(kind: str) -> list[tuple[object, str]]:
    """(16 kHz waveform, transcript) of the LibriVox or cards clips."""
    from smashlib.speech.audio_io import to_waveform

    script = REPOSITORY / "scripts" / "fetch_speech.sh"
    librivox = Path(subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout.strip())
    folder = librivox if kind == "librivox" else librivox.parent / "cards"
    listing = folder / ("transcription" if kind == "librivox" else "cards.transcription")
    found = []
    for line in listing.read_text().splitlines():
        match = TRANSCRIPT_LINE.match(line.strip())
        if match:
            found.append((to_waveform(folder / f"{match.group(2)}.wav"), match.group(1).strip()))
    return found


def word_error_rate(model, processor, speech) -> float:
    import torch

    from smashlib.speech.wer import normalize, word_edits

    edits = words = 0
    for wave, text in speech:
        features = processor.feature_extractor(wave, sampling_rate=16_000, return_tensors="pt").input_features
        with torch.no_grad():
            tokens = model.generate(input_features=features, max_new_tokens=96)
        hypothesis = processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)[0]
        reference = normalize(text)
        edits += word_edits(reference, normalize(hypothesis))
        words += len(reference)
    return 100.0 * edits / max(words, 1)


def weight_mb(model) -> float:
    unique = {(t.data_ptr(), t.dtype, tuple(t.shape)): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in unique.values()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    import datasets

    from smashlib import SmashConfig, smash
    from smashlib.bundled import load_whisper_tiny_en

    calibration, literature = clips("cards"), clips("librivox")
    rows = {"audio": [wave for wave, _ in calibration], "sentence": [text for _, text in calibration]}
    results = {}
    for label, values in RECIPES.items():
        model, processor = load_whisper_tiny_en()
        started = time.perf_counter()
        if values:
            config = SmashConfig(values, device="cpu")
            config.add_tokenizer(processor.tokenizer)
            config.add_processor(processor)
            if values.get("gptq_method") != "rtn":
                speech = datasets.Dataset.from_dict(rows)  # every clip in the train split
                config.add_data((speech, speech, speech), collate_fn="audio_processing_collate")
            model = smash(model, config, verbose=False)
        results[label] = {
            "smash_s": round(time.perf_counter() - started, 1),
            "weights_mb": round(weight_mb(getattr(model, "model", model)), 1),
            "wer_librivox": round(word_error_rate(model, processor, literature), 2),
            "wer_cards": round(word_error_rate(model, processor, calibration), 2),
        }
        print(label, results[label], file=sys.stderr, flush=True)
    print("| recipe | WER LibriVox % (another kind) | WER cards % (the calibration's clips) | weights MB | smash s |")
    print("|---|---|---|---|---|")
    for label, row in results.items():
        print(f"| {label} | {row['wer_librivox']} | {row['wer_cards']} | {row['weights_mb']} | {row['smash_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
