"""torch_compile: compile the model's forward with torch.compile (in place, so weights keep their names).

Runtime only: nothing is saved, loading compiles again. The first calls are slow (compilation);
``dynamic=True`` avoids recompiling for every new sequence length during generation.
"""
from __future__ import annotations

from ConfigSpace import Categorical

from smashlib.algorithm import Algorithm


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

    def apply(self, model, settings, components):
        options = {"backend": settings["backend"], "fullgraph": settings["fullgraph"], "dynamic": settings["dynamic"]}
        if settings["backend"] == "inductor":
            options["mode"] = settings["mode"]
        model.compile(**options)  # nn.Module.compile: in place, state_dict keys unchanged
        return model
