"""The interface every algorithm implements: what it declares as data, and the hooks smash() calls.

An algorithm is a class in ``algorithms/<group>/<name>.py``. Its class attributes are data that the
core reads without running any of its code (the configuration space, checks, documentation); its
methods do the work. Heavy packages (torchao, bitsandbytes, ...) are imported inside the methods, so
``import smashlib`` stays light and an algorithm whose package is missing is still listed.
"""
from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any, ClassVar

from packaging.requirements import Requirement

from smashlib.errors import MissingPackageError, UnsupportedDeviceError

if TYPE_CHECKING:  # imported for type hints only: keeps `import smashlib` free of torch at import
    import torch

    from smashlib.components import Components

#: The groups, in the order smash() applies them. Why this order:
#: distiller first (it changes the architecture, everything after works on the student); pruner before
#: quantizer (remove weights before they are quantized); recoverer after both (trains what compression
#: damaged, on the final weights); cacher, then compiler (compile the final graph, caches included);
#: batcher last (it wraps calls to the finished model).
GROUP_ORDER: tuple[str, ...] = (
    "distiller",
    "pruner",
    "quantizer",
    "recoverer",
    "cacher",
    "compiler",
    "batcher",
)

#: Groups whose effect lives only in the running process: nothing of theirs is saved, and loading a
#: smashed model applies them again.
RUNTIME_GROUPS: frozenset[str] = frozenset({"cacher", "compiler", "batcher"})

#: Components an algorithm can require, as an error message names them, and the call that attaches each.
COMPONENT_NAMES: dict[str, str] = {"tokenizer": "a tokenizer", "processor": "a processor", "data": "data"}
COMPONENT_FIXES: dict[str, str] = {
    "tokenizer": "cfg.add_tokenizer(...)",
    "processor": "cfg.add_processor(...)",
    "data": "cfg.add_data(...)",
}


class Algorithm:
    """Base class of every algorithm.

    Subclasses set the class attributes below and implement :meth:`apply`. Algorithms that change
    weights implement :meth:`prepare_for_loading` when their saved tensors need another module
    structure than the plain model (quantized layers), so that loading never needs calibration data.
    """

    #: Unique name, used as the choice in its group and as the prefix of its hyperparameters.
    name: ClassVar[str] = ""
    #: One of GROUP_ORDER.
    group: ClassVar[str] = ""
    #: Devices it runs on ("cpu", "cuda").
    runs_on: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: Components it needs: any of "tokenizer", "processor", "data".
    requires: ClassVar[tuple[str, ...]] = ()
    #: Requirement strings of the packages it imports lazily, e.g. ("torchao>=0.12",).
    needs_packages: ClassVar[tuple[str, ...]] = ()
    #: The pip extra that installs those packages, named in the error when one is missing.
    extra: ClassVar[str | None] = None
    #: Names of algorithms in other groups it cannot be combined with (turned into forbidden clauses).
    incompatible_with: ClassVar[tuple[str, ...]] = ()
    #: ConfigSpace hyperparameters with unprefixed names; the registry prefixes them with ``name_``.
    hyperparameters: ClassVar[tuple[Any, ...]] = ()
    #: One line for the docs and `smashlib algorithms`.
    summary: ClassVar[str] = ""

    # ------------------------------------------------------------------ declared-data helpers
    @classmethod
    def missing_packages(cls) -> list[str]:
        """The requirements in ``needs_packages`` that are not installed at a matching version."""
        missing = []
        for spec in cls.needs_packages:
            requirement = Requirement(spec)
            try:
                version = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(spec)
                continue
            if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
                missing.append(f"{spec} (found {version})")
        return missing

    @classmethod
    def install_hint(cls) -> str:
        extra = f"pip install 'smashlib[{cls.extra}]'" if cls.extra else "pip install " + " ".join(
            f"'{p}'" for p in cls.needs_packages
        )
        return extra

    def validate_environment(self, device: str, context: str = "", check_hardware: bool = True) -> None:
        """Raise MissingPackageError or UnsupportedDeviceError when this algorithm cannot run here on ``device``.

        The one check of packages and devices, used when a config chooses the algorithm, by smash() and
        when a saved model is loaded. ``context`` opens the message (e.g. "model/ was smashed with 'hqq', which").
        ``check_hardware=False`` skips asking torch whether the device is present: a config may be written
        on one machine for another.
        """
        opening = context or self.name
        missing = self.missing_packages()
        if missing:
            raise MissingPackageError(f"{opening} needs {', '.join(missing)}: {self.install_hint()}")
        if device not in self.runs_on:
            raise UnsupportedDeviceError(
                f"{opening} runs on {', '.join(self.runs_on)}, not on '{device}': use device='{self.runs_on[0]}'."
            )
        if check_hardware and device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UnsupportedDeviceError(
                    f"{opening} was asked to run on 'cuda' but torch sees no CUDA GPU: use device='cpu'."
                )

    @classmethod
    def upgrade_settings(cls, settings: dict[str, Any], schema_version: int) -> dict[str, Any]:
        """Map settings saved under an older smash_config.json schema (unprefixed names) to today's names.

        Called when a saved config with ``schema_version`` older than the current one is read; an
        algorithm that renames or re-expresses a hyperparameter overrides this so old folders still load.
        """
        return settings

    # ------------------------------------------------------------------ which layers (smashlib.targets)
    #: What the layers it can take are, for messages (an algorithm taking only nn.Linear says so).
    target_layer_kind: ClassVar[str] = "nn.Linear or transformers Conv1D layers"

    def accepts_layer(self, module: torch.nn.Module) -> bool:
        """Whether its ``target_modules`` setting may select ``module``: by default smashlib.targets.is_linear."""
        from smashlib.targets import is_linear

        return is_linear(module)

    def has_target_modules(self) -> bool:
        """Whether it declares the ``target_modules`` hyperparameter (smashlib.targets)."""
        from smashlib.targets import is_target_modules_hyperparameter

        return any(is_target_modules_hyperparameter(hp) for hp in self.hyperparameters)

    def target_names(self, model: torch.nn.Module, settings: dict[str, Any]) -> list[str]:
        """The layers it touches with these settings: ``settings["target_modules"]`` resolved against
        ``model`` among the layers :meth:`accepts_layer` takes, in model order. The one place every
        layer-wise algorithm asks "which layers"; override to narrow further (e.g. shapes a kernel takes).
        A quantizer leaves out the layers the model keeps in float (smashlib.targets.kept_in_float: T5's
        ``wo``, whose forward casts its input to the weight's dtype) unless ``"@kept_in_float"`` is included."""
        from smashlib.targets import KEPT_IN_FLOAT, TargetModules, kept_in_float, resolve_targets

        names = resolve_targets(model, settings["target_modules"], self.accepts_layer)
        if self.group != "quantizer" or KEPT_IN_FLOAT in TargetModules.parse(settings["target_modules"]).include:
            return names
        kept = kept_in_float(model)
        return [name for name in names if name not in kept]

    def check_targets(self, model: torch.nn.Module, settings: dict[str, Any]) -> None:
        """Raise before anything is modified when ``target_modules`` selects no layer of ``model`` or names an
        include pattern that matches none. Called by smash() after :meth:`check_model`."""
        if not self.has_target_modules():
            return
        from smashlib.targets import check_targets

        check_targets(model, settings["target_modules"], self.accepts_layer, self.name, self.target_layer_kind)
        if not self.target_names(model, settings):  # narrowed by the algorithm (shapes, kernels) to nothing
            from smashlib.errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"{self.name}: none of the layers {self.name}_target_modules selects can be handled "
                f"with these settings: {self.describe_unsupported(settings)}"
            )

    def describe_unsupported(self, settings: dict[str, Any]) -> str:
        """Why :meth:`target_names` can drop selected layers, and the fix (for the error above)."""
        return "choose other target_modules."

    @property
    def saves_state(self) -> bool:
        """Whether the algorithm's effect is stored in the saved weights (else it is re-applied at load)."""
        return self.group not in RUNTIME_GROUPS

    def required_components(self, settings: dict[str, Any]) -> tuple[str, ...]:
        """The components needed with these settings (``settings`` without prefix). Defaults to ``requires``;
        an algorithm whose need depends on its settings (calibration only for some recipes) overrides it."""
        return self.requires

    # ------------------------------------------------------------------ hooks
    def check_settings(self, settings: dict[str, Any], device: str) -> None:
        """Raise a SmashError when a combination of this algorithm's own settings cannot run on ``device``.

        ``settings`` holds this algorithm's hyperparameters without the prefix.
        """

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise UnsupportedModelError, with the reason, when this algorithm cannot handle ``model``."""

    def prepare_run(self, model: torch.nn.Module, settings: dict[str, Any], components: Components) -> None:
        """Called by smash() once every check has passed and before any algorithm is applied.

        The last chance to refuse ``model`` with these settings (a check needing both) while the model is
        untouched, and to keep what the run needs from the original model, in ``components.kept[self.name]``
        (a recoverer keeps the original as its teacher). smash() empties ``components.kept`` when it is done.
        """

    def apply(self, model: torch.nn.Module, settings: dict[str, Any], components: Components) -> torch.nn.Module:
        """Smash ``model`` in place where possible and return it (or its replacement)."""
        raise NotImplementedError

    def prepare_for_loading(self, model: torch.nn.Module, settings: dict[str, Any]) -> torch.nn.Module:
        """Give a freshly built model (possibly on the meta device) the module structure of the smashed one.

        Called at load time, before the saved tensors are loaded into it; no data, no calibration.
        The default fits algorithms whose saved tensors have the plain model's structure (pruning).
        """
        return model

    def after_loading(
        self, model: torch.nn.Module, settings: dict[str, Any], components: Components | None = None
    ) -> torch.nn.Module:
        """Finish a model whose saved tensors are loaded (repack kernels, re-register hooks).

        Runtime algorithms (cacher, compiler, batcher) are simply applied again, with the components
        loaded from the folder (``components``: the saved tokenizer and processor, never data).
        """
        if not self.saves_state:
            from smashlib.components import Components

            return self.apply(model, settings, components if components is not None else Components())
        return model

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.group}:{self.name}>"
