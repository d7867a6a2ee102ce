"""torch_compile: compile the model's forward with torch.compile (in place, so weights keep their names).

Runtime only: nothing is saved, loading compiles again. The first calls are slow (compilation: tens
of seconds for a tiny model on 2 CPU cores with Inductor, more for a real one), later ones reuse the
compiled code. ``dynamic=None`` (PyTorch's default) compiles the first shape statically and, when a
shape changes, once more with that dimension symbolic, so ``generate`` compiles a bounded number of
graphs (measured: 5 for a prompt, another prompt length and 6 generated tokens) instead of one per new
sequence length; ``dynamic=False`` would recompile for every length until torch's recompile limit and
then run eagerly. Int8 layers of torch_dynamic are opaque custom ops, so they compile without graph
breaks. Inductor on CPU writes and builds C++: it needs a C++ compiler, checked before smashing.
"""
from __future__ import annotations

import shutil

from ConfigSpace import Categorical

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedDeviceError


def cpu_compiler_found() -> bool:
    """Whether Inductor's C++ compiler (torch._inductor.config.cpp.cxx, else g++/c++/clang++) is on PATH."""
    from torch._inductor import config as inductor_config

    configured = inductor_config.cpp.cxx
    candidates = [c for c in (configured if isinstance(configured, tuple) else (configured,)) if c]
    return any(shutil.which(c) for c in [*candidates, "g++", "c++", "clang++"])


class TorchCompile(Algorithm):
    name = "torch_compile"
    group = "compiler"
    summary = "torch.compile the forward pass (Inductor by default); compiled again after loading."
    hyperparameters = (
        Categorical("mode", ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"], default="default"),
        Categorical("backend", ["inductor", "aot_eager", "eager"], default="inductor"),
        Categorical("fullgraph", [False, True], default=False),
        Categorical("dynamic", [None, True, False], default=None),
    )

    def check_settings(self, settings, device):
        if settings["backend"] == "inductor" and device == "cpu" and not cpu_compiler_found():
            raise UnsupportedDeviceError(
                "torch_compile with backend='inductor' builds C++ on the CPU and finds no C++ compiler: install one "
                "(e.g. apt-get install g++) or set cfg['torch_compile_backend'] = 'aot_eager'."
            )

    def apply(self, model, settings, components):
        options = {"backend": settings["backend"], "fullgraph": settings["fullgraph"], "dynamic": settings["dynamic"]}
        if settings["backend"] == "inductor":
            options["mode"] = settings["mode"]
        model.compile(**options)  # nn.Module.compile: in place, state_dict keys unchanged
        return model
