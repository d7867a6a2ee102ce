"""ModuleSwapQuantizer: the base of quantizers that replace each targeted layer by a quantized module.

bnb_4bit, llm_int8, hqq and torch_dynamic all do the same two things: at smash time, swap every layer
``target_modules`` selects for a quantized one; at load time, swap the same layers of a weightless
skeleton for empty quantized ones the saved tensors are then loaded into. This class does both (and
the old-settings upgrade of the ``keep_*`` hyperparameters they replaced); a subclass implements only

- :meth:`make_quantized` (layer -> quantized layer, from the float weight) and
- :meth:`make_empty` (layer -> quantized layer of the same shapes, no data: for loading),

and optionally :meth:`tie_embedding` (the embedding module that reads a quantized, tied output head's
table), :meth:`target_names` (to narrow the selection to shapes its format takes) and
:meth:`after_swapping`. Layers are swapped one at a time; each new layer takes its predecessor's
train/eval mode (bitsandbytes picks other kernels in training mode). If making one layer fails, the
layers already swapped are put back, so a failing smash() leaves the model as it was (the originals
are kept until the swap is done: peak memory is the float model plus the quantized layers).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from smashlib.algorithm import Algorithm
from smashlib.modules import replace_module
from smashlib.targets import is_nn_linear, tied_embeddings

#: keep_full_precision (torch_dynamic, torchao, quanto; schema 1) -> target_modules preset.
KEEP_FULL_PRECISION_TO_TARGETS = {
    "none": "all_linear",
    "output_head": "all_but_output_head",
    "outlier_layers": "all_but_outlier_layers",
    "outlier_layers_and_output_head": "all_but_outlier_layers_and_output_head",
}


def upgrade_keep_settings(settings: dict[str, Any], schema_version: int) -> dict[str, Any]:
    """Schema-1 ``keep_full_precision`` / ``keep_output_head`` -> ``target_modules`` (same layers)."""
    settings = dict(settings)
    if schema_version >= 2:
        return settings
    if "keep_full_precision" in settings:
        settings["target_modules"] = KEEP_FULL_PRECISION_TO_TARGETS[settings.pop("keep_full_precision")]
    if "keep_output_head" in settings:
        settings["target_modules"] = "all_but_output_head" if settings.pop("keep_output_head") else "all_linear"
    return settings


class ModuleSwapQuantizer(Algorithm):
    """A quantizer that swaps each layer its ``target_modules`` selects; see the module docstring."""

    group: ClassVar[str] = "quantizer"

    # ------------------------------------------------------------------ what a subclass implements
    def make_quantized(self, layer: nn.Module, settings: dict[str, Any]) -> nn.Module:
        """The quantized replacement of ``layer`` (an nn.Linear or Conv1D holding its float weight)."""
        raise NotImplementedError

    def make_empty(self, layer: nn.Module, settings: dict[str, Any]) -> nn.Module:
        """A quantized layer with ``layer``'s shapes and no meaningful data, to load saved tensors into."""
        raise NotImplementedError

    def tie_embedding(self, head: nn.Module, embedding: nn.Module, settings: dict[str, Any]) -> nn.Module | None:
        """The module to put where ``embedding`` (tied to the quantized ``head``) is, or None to leave it
        alone (it keeps its own full-precision weight)."""
        return None

    def after_swapping(self, model: nn.Module, settings: dict[str, Any], loading: bool) -> None:
        """Called once all layers are swapped (at smash time and at load time)."""

    # ------------------------------------------------------------------ the hooks smash() and loading call
    @classmethod
    def upgrade_settings(cls, settings: dict[str, Any], schema_version: int) -> dict[str, Any]:
        return upgrade_keep_settings(settings, schema_version)

    def apply(self, model: nn.Module, settings: dict[str, Any], components: Any) -> nn.Module:
        self.swap(model, settings, self.make_quantized)
        self.after_swapping(model, settings, loading=False)
        return model

    def prepare_for_loading(self, model: nn.Module, settings: dict[str, Any]) -> nn.Module:
        self.swap(model, settings, self.make_empty)
        self.after_swapping(model, settings, loading=True)
        return model

    def swap(self, model: nn.Module, settings: dict[str, Any], make: Callable[[nn.Module, dict], nn.Module]) -> int:
        """Replace every targeted layer by ``make(layer, settings)``; returns how many were replaced."""
        names = self.target_names(model, settings)
        tied = tied_embeddings(model, names)  # before swapping: ties are found through the float weights
        replaced: list[tuple[str, nn.Module]] = []  # (path, original): to put back if a layer fails
        try:
            for name in names:
                layer = model.get_submodule(name)
                new = make(layer, settings).train(layer.training)
                first = model.get_submodule(tied[name][0]) if tied[name] else None
                embedding = self.tie_embedding(new, first, settings) if first is not None else None
                replaced.append((name, layer))
                replace_module(model, name, new)
                if embedding is not None:  # T5 reaches its one table by three paths: one module for all of them
                    for path in tied[name]:
                        replaced.append((path, model.get_submodule(path)))
                        replace_module(model, path, embedding)
        except BaseException:
            for path, original in reversed(replaced):  # smash() promises an unmodified model when it fails
                replace_module(model, path, original)
            raise
        return len(names)


class NnLinearQuantizer(Algorithm):
    """Base of the quantizers that quantize plain nn.Linear weights in place through their own library
    (torchao's tensor subclasses, quanto's QLinear): no counterpart of transformers' Conv1D, and the
    schema-1 ``keep_full_precision`` setting upgraded to ``target_modules``."""

    group: ClassVar[str] = "quantizer"
    target_layer_kind: ClassVar[str] = "nn.Linear layers (not transformers' Conv1D)"

    def accepts_layer(self, module: nn.Module) -> bool:
        """Only plain nn.Linear: the library has no counterpart of transformers' Conv1D (GPT-2's layers)."""
        return is_nn_linear(module)

    @classmethod
    def upgrade_settings(cls, settings: dict[str, Any], schema_version: int) -> dict[str, Any]:
        return upgrade_keep_settings(settings, schema_version)
