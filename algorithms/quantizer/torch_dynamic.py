"""torch_dynamic: int8 weights (per output channel) with activations quantized on the fly, on CPU.

Runs on PyTorch's fbgemm/x86 int8 kernel (see smashlib/layers/int8_linear.py). What costs quality is
the activations' outlier channels: the kernel gives each activation one scale, and the inputs of the
MLP down projections (after the gated activation) carry channels 100x larger than the rest. Two cures,
measured on SmolLM2-135M in docs/torch_dynamic.md:

- ``target_modules``: leave the layers whose inputs carry outliers (``down_proj`` and its kin) or the
  output head in full precision (the ``all_but_*`` presets of smashlib.targets, default
  ``all_but_outlier_layers``); costs size and speed, needs no data.
- ``smoothquant``: move the outliers into the weights first (SmoothQuant, smashlib/smoothquant.py),
  from calibration data (``cfg.add_data``, ``cfg.add_tokenizer``); then every Linear can be int8.

An output head tied to the input embeddings stays tied: both read one int8 matrix, so quantizing the
head shrinks the model instead of adding an int8 copy beside the fp32 embeddings.
"""
from __future__ import annotations

import torch
from ConfigSpace import Categorical, Float, Integer
from torch import nn

from smashlib.layers.int8_linear import Int8DynamicLinear, Int8Embedding
from smashlib.layers.tied_embedding import tie_spec
from smashlib.module_swap import ModuleSwapQuantizer
from smashlib.targets import target_modules_hyperparameter


class TorchDynamic(ModuleSwapQuantizer):
    name = "torch_dynamic"
    group = "quantizer"
    runs_on = ("cpu",)
    summary = "int8 weights per channel, int8 activations per call (fbgemm); optional SmoothQuant; CPU."
    hyperparameters = (
        target_modules_hyperparameter("all_but_outlier_layers"),
        Categorical("smoothquant", [False, True], default=False),
        Float("smoothquant_alpha", (0.0, 1.0), default=0.65),
        Integer("calibration_samples", (1, 1024), default=16),
    )

    def required_components(self, settings):
        return ("tokenizer", "data") if settings.get("smoothquant") else self.requires

    def make_quantized(self, layer, settings):
        return Int8DynamicLinear.from_linear(layer)

    def make_empty(self, layer, settings):
        return Int8DynamicLinear.empty_like(layer)

    def tie_embedding(self, head: nn.Module, embedding: nn.Module, settings) -> nn.Module | None:
        """An output head tied to the input embeddings stays tied: both read one int8 matrix (and the
        embedding keeps its scale, Gemma 3's), so quantizing the head shrinks the model."""
        spec = tie_spec(embedding)
        if spec is None:
            return None
        return Int8Embedding.tied_to(head, dtype=spec.dtype, padding_idx=spec.padding_idx, scale=spec.scale)

    def apply(self, model, settings, components):
        if settings["smoothquant"]:
            from smashlib.data import calibration_batches
            from smashlib.data.activation_calibration import SMOOTHQUANT_BATCH, SMOOTHQUANT_SEQ_LEN
            from smashlib.smoothquant import smooth

            batches = calibration_batches(
                components, n_samples=settings["calibration_samples"], seq_len=SMOOTHQUANT_SEQ_LEN,
                batch_size=SMOOTHQUANT_BATCH,
            )
            with torch.no_grad():
                smooth(model, batches, alpha=settings["smoothquant_alpha"], only=self.target_names(model, settings))
        return super().apply(model, settings, components)


def quantize_linears(model: nn.Module, names: list[str], empty: bool = False) -> None:
    """Replace the named Linears by Int8DynamicLinear (``empty``: uninitialised, for loading saved weights);
    a tied embedding reads the same int8 matrix. For code that picks its own layers."""
    algorithm = TorchDynamic()
    algorithm.target_names = lambda model, settings: names  # type: ignore[method-assign]
    algorithm.swap(model, {}, algorithm.make_empty if empty else algorithm.make_quantized)
