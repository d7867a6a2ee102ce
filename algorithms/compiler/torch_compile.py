"""torch_compile: compile the model's forward with torch.compile (in place, so weights keep their names).

Runtime only: nothing is saved, loading compiles again. The first calls are slow (compilation: tens
of seconds for a tiny model on 2 CPU cores with Inductor, more for a real one), later ones reuse the
compiled code. ``dynamic=None`` (PyTorch's default) compiles the first shape statically and, when a
shape changes, once more with that dimension symbolic, so ``generate`` compiles a bounded number of
graphs (measured: 5 for a prompt, another prompt length and 6 generated tokens) instead of one per new
sequence length; ``dynamic=False`` would recompile for every length until torch's recompile limit and
then run eagerly. Int8 layers of torch_dynamic are opaque custom ops, so they compile without graph
breaks. Inductor on CPU writes and builds C++: it needs a C++ compiler, checked before smashing.

What is compiled (``target``). ``"forward"`` (the default) compiles the model's forward: every call,
prefill and decode steps alike, runs compiled code. ``"decode"`` compiles only the decoding step of
``generate``, the way transformers does it on GPUs: ``generate`` then uses a static KV cache (fixed shapes,
so one compiled step serves every token; transformers keeps the largest cache length seen, so later calls
reuse it) and runs its prefill, and any plain forward call, eagerly. It compiles one graph instead of
several, so a loaded model is at full decode speed sooner (SmolLM2-135M 8-bit gptq on 2 cores: 11 s in a
fresh process with the cache below, against 38 s for the compiled forward), at the price of an eager
prefill (1.6x fp32 against 2.2x compiled; docs/cpu_recipe.md). It needs a decoder that supports a static
cache (``model._can_compile_fullgraph``), checked before smashing. ``"aot_decode"`` compiles the decoding step
ahead of time with AOTInductor (smashlib.aot_decode): a library whose C++ wrapper runs the whole step, with
no Dynamo guards and no Python between its kernels, over a preallocated cache of ``max_cache_len`` tokens
that eager prefill fills and each step attends over as far as it is filled. The library is built once per
machine into smashlib's cache folder (about 70 s for SmolLM2-135M on 2 cores) and loaded from there in
about a second; ``generate`` calls that do not fit it (several sequences, beam search, more tokens than
the cache holds) run as before. CPU only, full-attention decoders only.

Warm-up. Compiling is what the first calls of a loaded model pay (on 2 CPU cores: tens of seconds for the
prefill graph, more for decode's). Inductor keeps what it builds (generated code, compiled libraries,
AOTAutograd graphs) in an on-disk cache, keyed by the graph, the shapes and dtypes of its inputs, the torch
version and the CPU's instruction set, so a second process compiling the same model with the same recipe
finds it. Torch's default place for that cache is the temporary directory, which many machines empty at
reboot; ``cache="smashlib"`` (the default) keeps it under smashlib's cache folder instead, one folder per
torch version, unless the caller set ``TORCHINDUCTOR_CACHE_DIR`` already (then theirs is used). The cache is
kept on the machine, never in the saved folder: its entries are pickles, and a model folder from the Hub
must never make us load a pickle.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ConfigSpace import Categorical, Integer

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedDeviceError, UnsupportedModelError


def cpu_compiler_found() -> bool:
    """Whether Inductor's C++ compiler (torch._inductor.config.cpp.cxx, else g++/c++/clang++) is on PATH."""
    from torch._inductor import config as inductor_config

    configured = inductor_config.cpp.cxx
    candidates = [c for c in (configured if isinstance(configured, tuple) else (configured,)) if c]
    return any(shutil.which(c) for c in [*candidates, "g++", "c++", "clang++"])


def persistent_cache_dir() -> Path:
    """Where Inductor's cache goes with ``cache="smashlib"``: one folder per torch version."""
    import torch

    from smashlib.bundled import cache_root

    return cache_root() / "torch_compile" / f"torch-{torch.__version__}"


def use_persistent_cache() -> Path:
    """Point Inductor's cache at :func:`persistent_cache_dir`, unless the caller chose another folder.
    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` whenever it looks for its cache, so this takes effect for the
    compilations that follow."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # torch writes its default into the variable the first time it looks (importing Inductor may): that is
    # not a choice of the caller's
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    folder = persistent_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def compile_decoding_step(model, options: dict) -> None:
    """Make ``generate`` decode with a static cache and a compiled step (its prefill stays eager).

    transformers compiles the step itself when the cache is static and a ``CompileConfig`` allows the
    device (``_compile_all_devices``: on CPU it would not otherwise)."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=options["fullgraph"], dynamic=options["dynamic"], backend=options["backend"],
                           mode=options.get("mode", "default"))
    config._compile_all_devices = True
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = config


def compile_forward(model, options: dict) -> None:
    model.compile(backend=options["backend"], fullgraph=options["fullgraph"], dynamic=options["dynamic"],
                  **({"mode": options["mode"]} if "mode" in options else {}))  # in place, state_dict keys unchanged


def compile_ahead_of_time(model, options: dict) -> None:
    from smashlib.aot_decode.runtime import attach

    attach(model, options["max_cache_len"])


def sliding_window_layers(model) -> int:
    """How many of the decoder's layers attend over a sliding window (as transformers' cache would build them)."""
    from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    return sum(isinstance(layer, DynamicSlidingWindowLayer) for layer in cache.layers)


#: target -> what compiling it does to the model (in place)
TARGETS = {"forward": compile_forward, "decode": compile_decoding_step, "aot_decode": compile_ahead_of_time}


class TorchCompile(Algorithm):
    name = "torch_compile"
    group = "compiler"
    summary = "torch.compile the forward pass (Inductor by default); compiled again after loading."
    hyperparameters = (
        Categorical("mode", ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"], default="default"),
        Categorical("backend", ["inductor", "aot_eager", "eager"], default="inductor"),
        Categorical("fullgraph", [False, True], default=False),
        Categorical("dynamic", [None, True, False], default=None),
        Categorical("cache", ["smashlib", "torch"], default="smashlib"),
        Categorical("target", ["forward", "decode", "aot_decode"], default="forward"),
        # target "aot_decode" only: the tokens (prompt + new) its preallocated cache holds
        Integer("max_cache_len", (16, 131_072), default=1024, log=True),
    )

    def check_settings(self, settings, device):
        if settings["backend"] == "inductor" and device == "cpu" and not cpu_compiler_found():
            raise UnsupportedDeviceError(
                "torch_compile with backend='inductor' builds C++ on the CPU and finds no C++ compiler: install one "
                "(e.g. apt-get install g++) or set cfg['torch_compile_backend'] = 'aot_eager'."
            )
        if settings.get("target") == "aot_decode" and (device != "cpu" or settings["backend"] != "inductor"):
            raise UnsupportedDeviceError(
                f"torch_compile_target='aot_decode' builds the decoding step with AOTInductor for the CPU; it needs "
                f"device='cpu' and torch_compile_backend='inductor' (got device={device!r}, backend={settings['backend']!r})."
            )

    def prepare_run(self, model, settings, components):
        self.check_target(model, settings)  # before any algorithm touches the model

    @staticmethod
    def check_target(model, settings) -> None:
        target = settings.get("target", "forward")
        if target == "forward":
            return
        if not callable(getattr(model, "generate", None)) or not getattr(model, "_can_compile_fullgraph", False):
            raise UnsupportedModelError(
                f"torch_compile_target={target!r} compiles generate's decoding step over a static KV cache, which "
                f"{type(model).__name__} does not support; use torch_compile_target='forward'."
            )
        if target == "aot_decode" and sliding_window_layers(model):
            raise UnsupportedModelError(
                f"torch_compile_target='aot_decode' keeps every token in its cache and attends over all of them; "
                f"{type(model).__name__} has sliding-window layers ({sliding_window_layers(model)} of them), which it "
                f"would attend wrongly past the window: use torch_compile_target='decode'."
            )

    def apply(self, model, settings, components):
        if settings.get("cache", "smashlib") == "smashlib":  # configs saved before the setting: the same default
            use_persistent_cache()
        options = {"backend": settings["backend"], "fullgraph": settings["fullgraph"], "dynamic": settings["dynamic"]}
        if settings["backend"] == "inductor":
            options["mode"] = settings["mode"]
        target = settings.get("target", "forward")
        if target != "forward":
            self.check_target(model, settings)
        TARGETS[target](model, {**options, "max_cache_len": settings.get("max_cache_len", 1024)})
        return model
