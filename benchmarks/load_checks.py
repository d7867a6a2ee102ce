"""What the load-time safety checks cost, measured paired in one process (issue 11, items 7 and 8).

1. A tiny Llama folder whose config.json claims 3000 layers: seconds until it is refused (626 s before
   the header check, which runs before any algorithm builds its layers).
2. SmolLM2-135M with torch_dynamic: loading with every tensor copied into memory of its own (aligned,
   as torch allocates) against loading views into the file (the old behaviour), alternated.

    .venv/bin/python benchmarks/load_checks.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers

from smashlib import SmashConfig, SmashedModel, SmashedModelLoadError, serialization, smash


def refusal_seconds(scratch: Path) -> float:
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = scratch / "tiny"
    smash(model, SmashConfig({"quantizer": "torch_dynamic"}, device="cpu"), verbose=False).save_pretrained(folder)
    edited = json.loads((folder / "config.json").read_text())
    edited["num_hidden_layers"] = 3000
    (folder / "config.json").write_text(json.dumps(edited))
    start = time.perf_counter()
    try:
        SmashedModel.from_pretrained(folder)
    except SmashedModelLoadError:
        return time.perf_counter() - start
    raise AssertionError("the edited folder loaded")


def load_seconds(folder: Path, owned: bool) -> float:
    original = serialization.own_memory
    if not owned:  # the old behaviour: keep safetensors' views
        serialization.own_memory = lambda tensor: tensor
    try:
        start = time.perf_counter()
        SmashedModel.from_pretrained(folder, verify_checksum=False)
        return time.perf_counter() - start
    finally:
        serialization.own_memory = original


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="smashlib-load-checks-"))
    try:
        print(f"3000-layer config.json refused in {refusal_seconds(scratch):.1f} s (load average {os.getloadavg()[0]:.1f})")
        from smashlib.bundled import load_smollm2

        model, _ = load_smollm2()
        folder = scratch / "smollm2"
        smash(model, SmashConfig({"quantizer": "torch_dynamic"}, device="cpu"), verbose=False).save_pretrained(folder)
        del model
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for owned in (False, True):
                times[owned].append(load_seconds(folder, owned))
        views, copies = statistics.median(times[False]), statistics.median(times[True])
        print(f"SmolLM2 torch_dynamic load, median of {args.rounds}: views {views:.2f} s, owned copies {copies:.2f} s, "
              f"ratio {copies / views:.2f} (load average {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
