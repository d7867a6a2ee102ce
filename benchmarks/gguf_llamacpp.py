"""GPTQ-calibrated GGUF in llama.cpp next to llama.cpp's own quantizer, on SmolLM2-135M (not CI).

    python benchmarks/gguf_llamacpp.py                       # Q4_0 (the claim), in one process
    python benchmarks/gguf_llamacpp.py --types q4_0,q4_1,q8_0 --json gguf.json

For each llama.cpp type T:
  - "llama.cpp T":   smashlib writes the fp32 model as an F32 GGUF, and llama.cpp's own
                     ``llama_model_quantize`` (pure: every matrix T, the tied embedding included)
                     rounds it to nearest on T's blocks;
  - "gptq T":        smashlib's GPTQ solved on T's grid (``gptq_grid``), written with
                     ``save_pretrained(format="gguf")``: the same blocks, so the same file size.
  - "rtn T" (PyTorch only): round-to-nearest on the same grid, smashlib's own, for the PyTorch check;
  - "llama.cpp T rounding" (PyTorch only): every matrix rounded by ``gguf.quants.quantize``, the
                     package's numpy port of llama.cpp's reference quantizer (what llama_model_quantize
                     does for these types without an importance matrix), dequantized into the fp32
                     model: llama.cpp's own Q4_0 values, measured without building llama.cpp.
Perplexity is measured on the same token ids (PydocTopics' test split, windows never used to
calibrate) in llama.cpp (llama-cpp-python) and, for the smashlib models, in PyTorch too; speed is
llama.cpp's prefill (one window) and one-token decode rate, the models' rounds interleaved so machine
drift hits all alike. Without llama-cpp-python, the PyTorch perplexities are printed and the llama.cpp
half says how to install it (it builds llama.cpp from source).
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASET = "PydocTopics"
WINDOW = 512
DECODE_TOKENS = 32
BITS = {"q4_0": 4, "q4_1": 4, "q8_0": 8}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def negative_log_likelihood(logits: Any, ids: list[int]) -> tuple[float, int]:
    """Summed NLL of ids[1:] given logits [len, vocab] (numpy or torch), and the token count."""
    import torch

    logits = torch.as_tensor(logits[: len(ids) - 1]).float()
    targets = torch.tensor(ids[1:])
    return float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum")), len(ids) - 1


def torch_perplexity(model: Any, windows: list[list[int]]) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            nll, n = negative_log_likelihood(logits, ids)
            total, count = total + nll, count + n
    return math.exp(total / count)


def smash_on_grid(grid: str, method: str, tokenizer: Any, samples: int) -> Any:
    from smashlib import SmashConfig, smash
    from smashlib.bundled import load_smollm2

    model, _ = load_smollm2()
    config = SmashConfig(
        {"quantizer": "gptq", "gptq_grid": grid, "gptq_weight_bits": BITS[grid], "gptq_method": method,
         "gptq_calibration_samples": samples},
        device="cpu",
    )
    config.add_tokenizer(tokenizer)
    if method == "gptq":
        config.add_data(DATASET)
    return smash(model, config, verbose=False)


def llama_cpp_rounding(grid: str) -> Any:
    """SmolLM2 with every block matrix and the tied embedding/head rounded as llama.cpp rounds them."""
    import gguf
    import torch

    from smashlib.bundled import load_smollm2

    model, _ = load_smollm2()
    qtype = getattr(gguf.GGMLQuantizationType, grid.upper())
    matrices = [m.weight for layer in model.model.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    matrices.append(model.model.embed_tokens.weight)  # tied to lm_head: rounded once, as in a pure file
    with torch.no_grad():
        for weight in matrices:
            rounded = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), qtype), qtype)
            weight.copy_(torch.from_numpy(rounded))
    return model


def llama_cpp_quantize(source: Path, target: Path, grid: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
                    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[grid]
    params.pure = True  # every matrix in T (by default llama.cpp bumps the embedding/output to Q6_K)
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize returned {code}")


class LlamaCppModel:
    def __init__(self, path: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=WINDOW, n_batch=WINDOW, logits_all=True, n_threads=threads,
                         verbose=False)

    def logits(self, ids: list[int]) -> Any:
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[: len(ids)]

    def prefill_seconds(self, ids: list[int]) -> float:
        started = time.perf_counter()
        self.logits(ids)
        return time.perf_counter() - started

    def decode_seconds(self, ids: list[int], steps: int) -> float:
        self.llm.reset()
        self.llm.eval(ids[:16])
        started = time.perf_counter()
        for token in ids[16 : 16 + steps]:
            self.llm.eval([token])
        return time.perf_counter() - started


def llama_cpp_measurements(files: dict[str, Path], windows: list[list[int]], threads: int, rounds: int) -> dict:
    models = {label: LlamaCppModel(path, threads) for label, path in files.items()}
    results: dict[str, dict[str, float]] = {}
    for label, model in models.items():
        total, count = 0.0, 0
        for ids in windows:
            nll, n = negative_log_likelihood(model.logits(ids), ids)
            total, count = total + nll, count + n
        results[label] = {"llama.cpp perplexity": math.exp(total / count), "MB": files[label].stat().st_size / 1e6,
                          "prefill": [], "decode": []}
    for _ in range(rounds):  # interleaved rounds: drift on a shared machine hits every model alike
        for label, model in models.items():
            results[label]["prefill"].append(WINDOW / model.prefill_seconds(windows[0]))
            results[label]["decode"].append(DECODE_TOKENS / model.decode_seconds(windows[0], DECODE_TOKENS))
    for values in results.values():
        values["prefill tok/s"] = sorted(values.pop("prefill"))[rounds // 2]
        values["decode tok/s"] = sorted(values.pop("decode"))[rounds // 2]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="q4_0", help="comma-separated llama.cpp types: q4_0, q4_1, q8_0")
    parser.add_argument("--eval-windows", type=int, default=16, help=f"test windows of {WINDOW} tokens")
    parser.add_argument("--samples", type=int, default=32, help="GPTQ calibration sequences")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model (median kept)")
    parser.add_argument("--keep", metavar="DIR", help="keep the GGUF files here")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    grids = [t.strip() for t in args.types.split(",")]
    if unknown := [g for g in grids if g not in BITS]:
        parser.error(f"unknown types {unknown}: one of {sorted(BITS)}")

    from transformers import AutoTokenizer

    from smashlib import SmashConfig
    from smashlib.bundled import load_smollm2, smollm2_path
    from smashlib.data import calibration_batches
    from smashlib.export.gguf import save_gguf

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    holder = SmashConfig(device="cpu")
    holder.add_tokenizer(tokenizer)
    holder.add_data(DATASET)
    windows = [b["input_ids"][0].tolist() for b in calibration_batches(holder.components, args.eval_windows, WINDOW, split="test")]
    folder = Path(args.keep or tempfile.mkdtemp(prefix="gguf-bench-"))
    folder.mkdir(parents=True, exist_ok=True)

    rows: dict[str, dict[str, Any]] = {}
    have_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    files: dict[str, Path] = {}
    # the comparison first (the machine may be slow): llama.cpp's rounding, GPTQ, then RTN and fp32
    for grid in grids:
        reference = llama_cpp_rounding(grid)
        rows[f"llama.cpp {grid} rounding"] = {"torch perplexity": torch_perplexity(reference, windows)}
        say(f"llama.cpp {grid} rounding: {rows[f'llama.cpp {grid} rounding']}")
        del reference
        for method in ("gptq", "rtn"):
            label = f"{method} {grid}"
            started = time.perf_counter()
            smashed = smash_on_grid(grid, method, tokenizer, args.samples)
            rows[label] = {"quantize s": time.perf_counter() - started, "torch perplexity": torch_perplexity(smashed, windows)}
            say(f"{label}: {rows[label]}")
            if method == "gptq":
                files[label] = smashed.save_pretrained(folder / f"smollm2-gptq-{grid}.gguf", format="gguf")
                rows[label]["MB"] = files[label].stat().st_size / 1e6
            del smashed
    model, _ = load_smollm2()
    rows["fp32"] = {"torch perplexity": torch_perplexity(model, windows)}
    say(f"fp32: {rows['fp32']}")
    if have_llama_cpp:
        files["fp32"] = save_gguf(model, folder / "smollm2-f32.gguf", tokenizer=tokenizer)
        rows["fp32"]["MB"] = files["fp32"].stat().st_size / 1e6
    del model
    for grid in grids:
        if have_llama_cpp:
            files[f"llama.cpp {grid}"] = folder / f"smollm2-llamacpp-{grid}.gguf"
            llama_cpp_quantize(files["fp32"], files[f"llama.cpp {grid}"], grid)
    if have_llama_cpp:
        for label, values in llama_cpp_measurements(files, windows, args.threads, args.rounds).items():
            rows.setdefault(label, {}).update(values)
    else:
        say("llama-cpp-python is not installed, so the llama.cpp half is skipped (PyTorch perplexities above). "
            "Install it (it builds llama.cpp from source, minutes): CMAKE_ARGS='-DGGML_NATIVE=ON' pip install llama-cpp-python")
    load = os.getloadavg()[0]
    print(f"SmolLM2-135M-Instruct, {len(windows)} x {WINDOW}-token windows of {DATASET}'s test split, "
          f"{args.threads} threads, load average {load:.1f}")
    columns = ["MB", "torch perplexity", "llama.cpp perplexity", "prefill tok/s", "decode tok/s", "quantize s"]
    print("| model | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, values in rows.items():
        cells = [f"{values[c]:.2f}" if isinstance(values.get(c), float) else "-" for c in columns]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
