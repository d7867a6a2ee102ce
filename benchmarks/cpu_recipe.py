"""The CPU recipes in both phases, on two kinds of text, from the first call: SmolLM2-135M (not CI).

    python benchmarks/cpu_recipe.py --markdown docs/cpu_recipe.md          # every recipe, llama.cpp if installed
    python benchmarks/cpu_recipe.py --only "fp32 eager;gptq 4-bit g32, 8-bit head"

Protocol (issue 15):
- calibration: one kind of text only, the licence texts Debian ships in /usr/share/common-licenses (legal
  prose), those of LocalTexts' train split, as the recipe's attached data; the rows marked "LocalTexts"
  calibrate on that built-in mix of kinds instead (its train split: pydoc topics and licences);
- perplexity: 8 windows of 512 tokens of texts never calibrated on: the licences of LocalTexts' validation
  and test splits (the calibration's kind), Python's pydoc topics of PydocTopics' test split (another kind:
  technical documentation) and, where installed, Vim's user manual (a third kind, in no calibration);
- speed: each recipe is loaded from its saved folder in a fresh process, next to the fp32 eager model,
  and the two are timed in alternating rounds (prefill: one forward pass of 1 x 128 tokens returning the
  last position's logits, as ``generate`` does; decode: greedy tokens/s after the first token, 64 new
  tokens, batch 1), so a busy machine slows both alike; the table gives ratios to fp32 eager;
- warm-up: that fresh process's load time plus its first prefill and first decode calls, once with
  empty compiler caches (cold) and once more in a second fresh process (warm);
- peak memory: the fresh process's peak RSS above its RSS after imports, before the fp32 model is loaded;
- llama.cpp (optional, ``pip install llama-cpp-python``, builds from source): Q8_0 and Q4_K_M made by its
  own ``llama_model_quantize`` from an F32 GGUF of the same model, same token ids, same thread count.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LICENCES = Path("/usr/share/common-licenses")
#: The seed of smashlib's built-in splits (PydocTopics, LocalTexts), so evaluation text is never calibration text.
SEED = 42
WINDOWS, WINDOW = 8, 512
PROMPT_TOKENS, NEW_TOKENS = 128, 64
EIGHT_BIT = {"quantizer": "gptq", "gptq_weight_bits": 8, "gptq_group_size": -1}
#: bf16 for what is not quantized, and generate's decoding step compiled over a static cache (prefill eager).
BF16_DECODE = {"gptq_compute_dtype": "bfloat16", "compiler": "torch_compile", "torch_compile_target": "decode"}
#: 8-bit decode calls on PyTorch's weight-only kernel instead of smashlib's VNNI kernel (the default where it runs).
WEIGHT_ONLY_DECODE = {"gptq_decode_kernel": "weight_only"}

#: generate's decoding step compiled ahead of time by AOTInductor (smashlib.aot_decode); prefill eager.
AOT_DECODE = {"compiler": "torch_compile", "torch_compile_target": "aot_decode"}

#: label -> recipe. The recommended recipes are the ones README.md names.
RECIPES: dict[str, dict[str, Any]] = {
    "fp32 eager": {},
    "half bf16": {"quantizer": "half"},
    "torch_dynamic (default)": {"quantizer": "torch_dynamic"},
    "gptq 8-bit + torch_compile (recommended)": {**EIGHT_BIT, "compiler": "torch_compile"},
    "gptq 8-bit bf16, eager": {**EIGHT_BIT, "gptq_compute_dtype": "bfloat16"},
    "gptq 8-bit bf16 + compiled decode, LocalTexts": {**EIGHT_BIT, **BF16_DECODE},
    "gptq 8-bit bf16 + torch_compile, LocalTexts": {**EIGHT_BIT, "gptq_compute_dtype": "bfloat16",
                                                   "compiler": "torch_compile"},
    "gptq 8-bit + torch_compile, LocalTexts": {**EIGHT_BIT, "compiler": "torch_compile"},
    "gptq 8-bit + torch_compile, weight-only decode kernel": {**EIGHT_BIT, "compiler": "torch_compile",
                                                               **WEIGHT_ONLY_DECODE},
    "gptq 8-bit + AOT-compiled decode": {**EIGHT_BIT, **AOT_DECODE},
    "gptq 4-bit g32, sensitive layers 8-bit + AOT-compiled decode": {
        "quantizer": "gptq", "gptq_sensitive_layers_precision": "int8", **AOT_DECODE},
    "gptq 4-bit g32 (defaults)": {"quantizer": "gptq"},
    "gptq 4-bit g32, 8-bit head": {"quantizer": "gptq", "gptq_output_head_precision": "int8"},
    "gptq 4-bit g32, 8-bit head, bf16 + compiled decode, LocalTexts": {
        "quantizer": "gptq", "gptq_output_head_precision": "int8", **BF16_DECODE},
    "gptq 4-bit g32, sensitive layers 8-bit": {"quantizer": "gptq", "gptq_sensitive_layers_precision": "int8"},
    "gptq 4-bit g32, sensitive layers 8-bit, bf16 + compiled decode": {
        "quantizer": "gptq", "gptq_sensitive_layers_precision": "int8", **BF16_DECODE},
    "gptq 4-bit g32, sensitive layers 8-bit + torch_compile": {
        "quantizer": "gptq", "gptq_sensitive_layers_precision": "int8", "compiler": "torch_compile"},
    "gptq 4-bit g32, sensitive layers 8-bit, PyTorch's int4 kernel": {
        "quantizer": "gptq", "gptq_sensitive_layers_precision": "int8", "gptq_decode_kernel": "int8_only"},
}
LLAMA_CPP_TYPES = ("Q8_0", "Q4_K_M")
#: The fp32 folder's weights (safetensors) in MB, as docs/benchmarks.md measured it.
FP32_MB = 538.1


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ====================================================================== texts
def licence_split() -> tuple[list[str], list[str]]:
    """(calibration files, evaluation files): LocalTexts' train split of the licences, and its validation
    and test splits, so a recipe calibrated on LocalTexts never saw the evaluation licences either."""
    from smashlib.data.local_texts import licence_documents
    from smashlib.data.pydoc_topics import split_by_characters

    train, val, test = split_by_characters(licence_documents(), SEED)
    return train, val + test


def licence_texts(names: list[str]) -> list[str]:
    return [(LICENCES / name).read_text(encoding="utf-8", errors="replace") for name in names]


def calibration_texts() -> list[str]:
    """The calibration licences cut at blank lines into pieces of about 2000 characters (as LocalTexts and
    PydocTopics cut their documents), so the attached data has rows to split."""
    from smashlib.data.pydoc_topics import documents

    return [piece for text in licence_texts(licence_split()[0]) for piece in documents(text)]


def pydoc_test_texts() -> list[str]:
    from pydoc_data.topics import topics

    from smashlib.data.pydoc_topics import topic_split

    return [topics[name] for name in topic_split(SEED)[2]]


def vim_manual_texts() -> list[str]:
    """Vim's user manual (Debian's vim-runtime), a third kind no recipe calibrates on; empty if absent."""
    folders = sorted(Path("/usr/share/vim").glob("vim*/doc"))
    return [path.read_text(encoding="utf-8", errors="replace") for path in sorted(folders[-1].glob("usr_*.txt"))] if folders else []


def token_windows(tokenizer: Any, texts: list[str], count: int = WINDOWS, length: int = WINDOW) -> list[list[int]]:
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= count * length:
            break
    if len(ids) < count * length:
        raise SystemExit(f"the texts hold {len(ids)} tokens, fewer than {count} x {length}")
    return [ids[i * length:(i + 1) * length] for i in range(count)]


def evaluation_windows(tokenizer: Any) -> dict[str, list[list[int]]]:
    windows = {"licences": token_windows(tokenizer, licence_texts(licence_split()[1])),
               "pydoc": token_windows(tokenizer, pydoc_test_texts())}
    if vim := vim_manual_texts():
        windows["vim"] = token_windows(tokenizer, vim)
    return windows


def perplexity_from(logits_of: Any, windows: list[list[int]]) -> float:
    import torch

    total, count = 0.0, 0
    for ids in windows:
        logits = torch.as_tensor(logits_of(ids)[: len(ids) - 1]).float()
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
        count += len(ids) - 1
    return math.exp(total / count)


# ====================================================================== PyTorch timings
class TorchRunner:
    """Prefill and decode timings of a PyTorch model (a SmashedModel or a transformers model)."""

    def __init__(self, model: Any, prompt: list[int]) -> None:
        import torch

        self.model, self.torch = model, torch
        self.ids = torch.tensor([prompt[:PROMPT_TOKENS]])
        self.mask = torch.ones_like(self.ids)

    def logits(self, ids: list[int]) -> Any:
        with self.torch.no_grad():
            return self.model(input_ids=self.torch.tensor([ids])).logits[0]

    def prefill_seconds(self) -> float:
        with self.torch.no_grad():
            started = time.perf_counter()
            self.model(input_ids=self.ids, attention_mask=self.mask, logits_to_keep=1)
            return time.perf_counter() - started

    def generate_seconds(self, new_tokens: int) -> float:
        """Greedy ``new_tokens`` tokens, EOS ignored as llama.cpp's loop ignores it. (Not ``min_new_tokens``:
        its logits processor scans the whole vocabulary for the EOS id at every step, 0.5 ms a token here,
        a cost of asking for a fixed length, not of the recipe.)"""
        settings = copy.deepcopy(self.model.generation_config)
        settings.update(eos_token_id=None, max_new_tokens=new_tokens, do_sample=False)
        with self.torch.no_grad():
            started = time.perf_counter()
            out = self.model.generate(input_ids=self.ids, attention_mask=self.mask, generation_config=settings)
            elapsed = time.perf_counter() - started
        assert out.shape[1] == self.ids.shape[1] + new_tokens, "generate stopped early"
        return elapsed

    def decode_tokens_per_s(self) -> float:
        """Tokens/s after the first token: (n - 1) / (time(n) - time(1))."""
        return (NEW_TOKENS - 1) / max(1e-9, self.generate_seconds(NEW_TOKENS) - self.generate_seconds(1))


class LlamaCppRunner:
    """The same measurements through llama-cpp-python."""

    def __init__(self, path: Path, threads: int, prompt: list[int]) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=WINDOW, n_batch=WINDOW, logits_all=True, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        self.prompt = prompt[:PROMPT_TOKENS]

    def logits(self, ids: list[int]) -> Any:
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[: len(ids)]

    def prefill_seconds(self) -> float:
        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(self.prompt)
        return time.perf_counter() - started

    def decode_tokens_per_s(self) -> float:
        """Greedy decoding after the prompt, one token per eval, as generate does."""
        import numpy as np

        self.llm.reset()
        self.llm.eval(self.prompt)
        token = int(np.argmax(self.llm.scores[len(self.prompt) - 1]))
        started = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            self.llm.eval([token])
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
        return (NEW_TOKENS - 1) / (time.perf_counter() - started)


def paired_rounds(runner: Any, base: TorchRunner, rounds: int) -> dict[str, float]:
    """Median speed ratios to fp32 eager, timed in alternating order; and the medians themselves."""
    prefill, decode, base_prefill, base_decode = [], [], [], []
    for _ in range(rounds):
        prefill.append(min(runner.prefill_seconds() for _ in range(3)))
        base_prefill.append(min(base.prefill_seconds() for _ in range(3)))
        decode.append(runner.decode_tokens_per_s())
        base_decode.append(base.decode_tokens_per_s())
    ratio = statistics.median
    return {
        "prefill_ms": 1e3 * ratio(prefill), "decode_tok_s": ratio(decode),
        "base_prefill_ms": 1e3 * ratio(base_prefill), "base_decode_tok_s": ratio(base_decode),
        "prefill_x": ratio(b / r for b, r in zip(base_prefill, prefill)),
        "decode_x": ratio(r / b for r, b in zip(decode, base_decode)),
    }


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 1e6


# ====================================================================== workers (fresh processes)
def worker_smash(label: str, folder: Path, result: Path) -> None:
    from smashlib import SmashConfig, smash
    from smashlib.bundled import load_smollm2

    model, tokenizer = load_smollm2()
    config = SmashConfig(RECIPES[label], device="cpu")
    config.add_tokenizer(tokenizer)
    if any(component == "data" for _, component in config.missing_components()):
        config.add_data("LocalTexts" if label.endswith("LocalTexts") else calibration_texts())
    started = time.perf_counter()
    smashed = smash(model, config, verbose=False)
    seconds = time.perf_counter() - started
    smashed.save_pretrained(folder)
    result.write_text(json.dumps({"smash_s": seconds, "disk_mb": folder_mb(folder)}))


def worker_measure(label: str, folder: Path | None, result: Path, rounds: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoTokenizer

    from smashlib import SmashedModel
    from smashlib.bundled import load_smollm2, smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    windows = evaluation_windows(tokenizer)
    rss_after_imports = _rss_mb()
    started = time.perf_counter()
    model = SmashedModel.from_pretrained(folder) if folder is not None else load_smollm2()[0]
    out: dict[str, Any] = {"load_s": time.perf_counter() - started}
    runner = TorchRunner(model, windows["pydoc"][0])
    out["first_prefill_s"] = runner.prefill_seconds()
    out["first_decode_s"] = runner.generate_seconds(8)
    out["to_full_speed_s"] = time.perf_counter() - started
    out.update({f"ppl_{kind}": perplexity_from(runner.logits, w) for kind, w in windows.items()})
    out.update(decode_kernel_perplexities(model, runner, windows))
    out["peak_mb"] = _peak_mb() - rss_after_imports
    base = TorchRunner(load_smollm2()[0], windows["pydoc"][0])
    out.update(paired_rounds(runner, base, rounds))
    result.write_text(json.dumps(out))


def decode_kernel_perplexities(model: Any, runner: TorchRunner, windows: dict[str, list[list[int]]]) -> dict[str, float]:
    """For models whose 8-bit layers decode on smashlib's VNNI kernel: the perplexities with *every* product on
    that kernel (the windows' 512-token calls otherwise run the bf16 GEMM), i.e. the quality of what decoding
    computes. Eager (a compiled forward would recompile for the patched row limit)."""
    import torch

    from smashlib.layers import lowbit_kernels
    from smashlib.layers.packed_int import PackedLinear

    if not any(m.kernel_name == lowbit_kernels.Int8VnniCPU.name for m in model.modules() if isinstance(m, PackedLinear)):
        return {}
    limit = lowbit_kernels.GEMM_ROWS
    lowbit_kernels.GEMM_ROWS = 1 << 30
    try:
        with torch.compiler.set_stance("force_eager"):
            return {f"decode_kernel_ppl_{kind}": perplexity_from(runner.logits, w) for kind, w in windows.items()}
    finally:
        lowbit_kernels.GEMM_ROWS = limit


def worker_llama_cpp(work: Path, result: Path, rounds: int, threads: int) -> None:
    import llama_cpp
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoTokenizer

    from smashlib.bundled import load_smollm2, smollm2_path
    from smashlib.export.gguf import save_gguf

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    windows = evaluation_windows(tokenizer)
    model, _ = load_smollm2()
    f32 = save_gguf(model, work / "smollm2-f32.gguf", tokenizer=tokenizer)
    base = TorchRunner(model, windows["pydoc"][0])
    rows = {}
    for name in LLAMA_CPP_TYPES:
        target = work / f"smollm2-{name}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(target).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama_model_quantize failed for {name}")
        started = time.perf_counter()
        runner = LlamaCppRunner(target, threads, windows["pydoc"][0])
        row: dict[str, Any] = {"load_s": time.perf_counter() - started, "disk_mb": target.stat().st_size / 1e6}
        row.update({f"ppl_{kind}": perplexity_from(runner.logits, w) for kind, w in windows.items()})
        row.update(paired_rounds(runner, base, rounds))
        rows[f"llama.cpp {name}"] = row
        del runner
    result.write_text(json.dumps(rows))


# ====================================================================== the driver
def _run_worker(args: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, __file__, *args], check=True, env={**os.environ, **(env or {})})


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def drive(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    labels = args.only or list(RECIPES)
    work = Path(args.work or tempfile.mkdtemp(prefix="cpu-recipe-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    common = ["--rounds", str(args.rounds), "--threads", str(args.threads)]
    for label in labels:
        slug = "".join(c if c.isalnum() else "-" for c in label)
        result = work / f"{slug}.json"
        row: dict[str, Any] = {"recipe": RECIPES[label]}
        folder = None
        if RECIPES[label]:
            folder = work / slug
            say(f"[{label}] smashing")
            _run_worker(["--worker", "smash", "--label", label, "--folder", str(folder), "--result", str(result)])
            row.update(_read(result))
        compiled = RECIPES[label].get("compiler") == "torch_compile"
        cache = work / f"{slug}-inductor-cache"
        env = {"TORCHINDUCTOR_CACHE_DIR": str(cache)} if compiled else None
        folder_args = ["--folder", str(folder)] if folder is not None else []
        if RECIPES[label].get("torch_compile_target") == "aot_decode":
            clear_aot_cache()  # the smash built it: a cold load on another machine builds it again
        say(f"[{label}] measuring" + (" (cold compiler caches)" if compiled else ""))
        _run_worker(["--worker", "measure", "--label", label, *folder_args, "--result", str(result), *common], env)
        measured = _read(result)
        if compiled:
            cold = {f"cold_{k}": measured[k] for k in ("load_s", "first_prefill_s", "first_decode_s", "to_full_speed_s")}
            say(f"[{label}] measuring again (warm compiler caches)")
            _run_worker(["--worker", "measure", "--label", label, *folder_args, "--result", str(result), *common], env)
            measured = {**_read(result), **cold}
        row.update(measured)
        rows[label] = row
        say(f"[{label}] {json.dumps(row)}")
    if not args.no_llama_cpp and importlib.util.find_spec("llama_cpp") is not None:
        say("[llama.cpp] quantizing and measuring")
        result = work / "llama-cpp.json"
        _run_worker(["--worker", "llama_cpp", "--folder", str(work), "--result", str(result), *common])
        rows.update(_read(result))
    elif not args.no_llama_cpp:
        say("llama-cpp-python is not installed: the llama.cpp rows are skipped. It builds llama.cpp from source "
            "(minutes): CMAKE_ARGS='-DGGML_NATIVE=ON' pip install llama-cpp-python")
    return rows


def clear_aot_cache() -> None:
    """Empty smashlib's cache of AOT-compiled decoding steps, so the next load builds its step (cold)."""
    import shutil

    from smashlib.bundled import cache_root

    shutil.rmtree(cache_root() / "aot_decode", ignore_errors=True)


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _relative(label: str, row: dict[str, Any], base: dict[str, Any], key: str) -> str:
    """``row[key]`` and its change from fp32 eager's."""
    if key not in row:
        return "-"
    if label == "fp32 eager" or key not in base:
        return f"{row[key]:.2f}"
    return f"{row[key]:.2f} ({100 * (row[key] / base[key] - 1):+.1f}%)"


def markdown(rows: dict[str, dict[str, Any]], load: tuple[float, float], threads: int) -> str:
    base = rows.get("fp32 eager", {})
    lines = [
        ("| recipe | prefill 1x128 (vs fp32) | decode batch 1 (vs fp32) | ppl licences | ppl pydoc | ppl vim manual "
         "| on disk (MB) | peak memory (MB) | smash (s) | to full speed, cold / warm (s) |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        warm = row.get("to_full_speed_s", row.get("load_s"))
        cold = row.get("cold_to_full_speed_s")
        disk = row.get("disk_mb", FP32_MB if label == "fp32 eager" else None)
        lines.append(
            f"| {label} | {_cell(row.get('prefill_ms'), '.0f')} ms ({_cell(row.get('prefill_x'), '.2f')}x) "
            f"| {_cell(row.get('decode_tok_s'), '.1f')} tok/s ({_cell(row.get('decode_x'), '.2f')}x) "
            f"| {_relative(label, row, base, 'ppl_licences')} | {_relative(label, row, base, 'ppl_pydoc')} "
            f"| {_relative(label, row, base, 'ppl_vim')} "
            f"| {_cell(disk, '.1f')} | {_cell(row.get('peak_mb'), '.0f')} | {_cell(row.get('smash_s'), '.0f')} "
            f"| {(_cell(cold, '.1f') + ' / ') if cold is not None else ''}{_cell(warm, '.1f')} |"
        )
    lines.append("")
    lines.append(f"{threads} threads; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (2 cores).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=lambda text: [p.strip() for p in text.split(";")], help="labels, separated by ;")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per recipe (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--work", metavar="DIR", help="keep the saved folders and caches here")
    parser.add_argument("--markdown", metavar="PATH")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", choices=["smash", "measure", "llama_cpp"], help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "smash":
        worker_smash(args.label, Path(args.folder), Path(args.result))
        return 0
    if args.worker == "measure":
        worker_measure(args.label, Path(args.folder) if args.folder else None, Path(args.result), args.rounds, args.threads)
        return 0
    if args.worker == "llama_cpp":
        worker_llama_cpp(Path(args.folder), Path(args.result), args.rounds, args.threads)
        return 0
    if args.only and (unknown := [label for label in args.only if label not in RECIPES]):
        parser.error(f"unknown labels {unknown}: {list(RECIPES)}")
    start_load = os.getloadavg()[0]
    rows = drive(args)
    text = markdown(rows, (start_load, os.getloadavg()[0]), args.threads)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
