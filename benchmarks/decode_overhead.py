"""Where a compiled 8-bit decode step spends its time, and what two ways of cutting the overhead buy (not CI).

    python benchmarks/decode_overhead.py --json benchmarks/decode_overhead_results.json

SmolLM2-135M, smashlib's recommended 8-bit recipe (gptq 8-bit per row, the compiled forward), batch 1, the
protocol of benchmarks/cpu_recipe.py (128-token prompt of pydoc text, 64 greedy tokens). One process, one
fresh Inductor cache, two copies of the same smashed model:

- ``python``: compiled as the recipe does (Inductor's default Python wrapper around its kernels);
- ``cpp``: compiled with Inductor's ``cpp_wrapper`` (the calls between kernels in C++);

each one's first prefill + decode is timed (a cold compile), then both are timed in alternating rounds
(medians), then both again with ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``, which runs only
the guards that tell the compiled graphs apart: what is left of a step once Dynamo's guards are gone.
Last, a torch.profiler table of the Python-wrapper step: per token, the matrix-vector kernel against the rest.
It is the evidence for docs/cpu_recipe.md's "Decode against llama.cpp" on an AVX2 CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu_recipe  # the protocol: texts, prompt, runners

PROFILED_TOKENS = 32


def smashed_folder(work: Path) -> Path:
    """The recipe's gptq 8-bit model, saved (without its compiler: each copy below is compiled its own way)."""
    folder = work / "gptq8"
    if not (folder / "smash_config.json").exists():
        from smashlib import SmashConfig, smash
        from smashlib.bundled import load_smollm2

        model, tokenizer = load_smollm2()
        config = SmashConfig(cpu_recipe.EIGHT_BIT, device="cpu")
        config.add_tokenizer(tokenizer)
        config.add_data(cpu_recipe.calibration_texts())
        smash(model, config, verbose=False).save_pretrained(folder)
    return folder


def compiled_copy(folder: Path, wrapper: str):
    from smashlib import SmashedModel

    model = SmashedModel.from_pretrained(folder)
    if wrapper == "cpp":
        from torch._inductor import list_mode_options

        model.model.compile(backend="inductor", options={**list_mode_options("default"), "cpp_wrapper": True})
    else:
        model.model.compile(backend="inductor", mode="default")
    return model


def per_token_profile(runner) -> dict[str, float]:
    """ms per generated token: smashlib's mat-vec kernel, attention, the compiled graph's own time, guards."""
    from torch.profiler import profile

    with profile() as prof:
        runner.generate_seconds(PROFILED_TOKENS)
    names = {"smashlib::int8_vnni_matvec": "matvec_kernel_ms", "aten::_scaled_dot_product_flash_attention_for_cpu":
             "attention_ms", "TorchDynamo Cache Lookup": "guards_ms", "aten::isin": "stopping_criteria_ms"}
    out = {value: 0.0 for value in names.values()}
    out["compiled_graph_self_ms"] = 0.0
    for event in prof.key_averages():
        if event.key in names:
            out[names[event.key]] += event.self_cpu_time_total / 1e3 / PROFILED_TOKENS
        elif event.key.startswith("## Call CompiledFxGraph"):
            out["compiled_graph_self_ms"] += event.self_cpu_time_total / 1e3 / PROFILED_TOKENS
    out["total_ms"] = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / PROFILED_TOKENS
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", metavar="DIR", help="keep the smashed folder here")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from smashlib.bundled import smollm2_path

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="smashlib-decode-"))
    folder = smashed_folder(work)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-", dir=work)  # cold compiles
    prompt = cpu_recipe.evaluation_windows(AutoTokenizer.from_pretrained(smollm2_path()))["pydoc"][0]
    runners, result = {}, {"load_average_start": os.getloadavg()[0]}
    for wrapper in ("python", "cpp"):
        runner = cpu_recipe.TorchRunner(compiled_copy(folder, wrapper), prompt)
        started = time.perf_counter()
        runner.prefill_seconds()
        runner.generate_seconds(8)
        result[f"{wrapper}_cold_to_full_speed_s"] = time.perf_counter() - started
        runner.generate_seconds(8)
        runners[wrapper] = runner
        print(f"{wrapper}: compiled in {result[f'{wrapper}_cold_to_full_speed_s']:.0f} s", flush=True)
    timings = {wrapper: {"prefill": [], "decode": [], "decode_without_guards": []} for wrapper in runners}
    for _ in range(args.rounds):
        for wrapper, runner in runners.items():
            timings[wrapper]["prefill"].append(min(runner.prefill_seconds() for _ in range(3)))
            timings[wrapper]["decode"].append(runner.decode_tokens_per_s())
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                timings[wrapper]["decode_without_guards"].append(runner.decode_tokens_per_s())
    for wrapper, values in timings.items():
        result[f"{wrapper}_prefill_ms"] = 1e3 * statistics.median(values["prefill"])
        result[f"{wrapper}_decode_tok_s"] = statistics.median(values["decode"])
        result[f"{wrapper}_decode_without_guards_tok_s"] = statistics.median(values["decode_without_guards"])
        result[f"{wrapper}_decode_rounds"] = values["decode"]
    result["cpp_over_python_decode_x"] = statistics.median(
        c / p for c, p in zip(timings["cpp"]["decode"], timings["python"]["decode"]))
    result["python_profile_per_token"] = per_token_profile(runners["python"])
    result["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
