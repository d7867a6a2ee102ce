"""torch_dynamic: int8 weights (per output channel) with activations quantized on the fly, on CPU.

Runs on PyTorch's fbgemm/x86 int8 kernel (see smashlib/layers/int8_linear.py). What costs quality is
the activations' outlier channels: the kernel gives each activation one scale, and the inputs of the
MLP down projections (after the gated activation) carry channels 100x larger than the rest. Two cures,
measured on SmolLM2-135M in docs/torch_dynamic.md:

- ``keep_full_precision``: leave the layers whose inputs carry outliers (``down_proj`` and its kin) or
  the output head in full precision; costs size and speed, needs no data.
- ``smoothquant``: move the outliers into the weights first (SmoothQuant, smashlib/smoothquant.py),
  from calibration data (``cfg.add_data``, ``cfg.add_tokenizer``); then every Linear can be int8.

An output head tied to the input embeddings stays tied: both read one int8 matrix, so quantizing the
head shrinks the model instead of adding an int8 copy beside the fp32 embeddings.
"""
from __future__ import annotations

import torch
from ConfigSpace import Categorical, Float, Integer
from torch import nn

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError
from smashlib.layers.int8_linear import Int8DynamicLinear, Int8Embedding, is_linear
from smashlib.modules import KEEP_PRESETS, linears_to_quantize, replace_module

#: Tokens per calibration sequence for SmoothQuant (activation ranges settle within a few thousand tokens).
CALIBRATION_SEQ_LEN = 256
CALIBRATION_BATCH = 4


def tied_embeddings(model: nn.Module, head: nn.Module) -> list[str]:
    """Every path to an nn.Embedding sharing ``head``'s weight tensor (T5 reaches its one shared
    embedding as ``shared``, ``encoder.embed_tokens`` and ``decoder.embed_tokens``)."""
    weight = getattr(head, "weight", None)
    return [
        name
        for name, module in model.named_modules(remove_duplicate=False)
        if type(module) is nn.Embedding and weight is not None and module.weight is weight
    ]


def quantize_linears(model: nn.Module, names: list[str], empty: bool = False) -> None:
    """Replace the named Linears by Int8DynamicLinear (``empty``: uninitialised, for loading saved weights).
    An embedding tied to a replaced Linear becomes an Int8Embedding reading the same int8 matrix."""
    tied = {name: tied_embeddings(model, model.get_submodule(name)) for name in names}
    for name in names:
        linear = model.get_submodule(name)
        layer = Int8DynamicLinear.empty_like(linear) if empty else Int8DynamicLinear.from_linear(linear)
        if tied[name]:
            embedding = Int8Embedding.tied_to(layer, dtype=model.get_submodule(tied[name][0]).weight.dtype)
            for path in tied[name]:
                replace_module(model, path, embedding)
        replace_module(model, name, layer)


class TorchDynamic(Algorithm):
    name = "torch_dynamic"
    group = "quantizer"
    runs_on = ("cpu",)
    summary = "int8 weights per channel, int8 activations per call (fbgemm); optional SmoothQuant; CPU."
    hyperparameters = (
        Categorical("keep_full_precision", list(KEEP_PRESETS), default="outlier_layers"),
        Categorical("smoothquant", [False, True], default=False),
        Float("smoothquant_alpha", (0.0, 1.0), default=0.65),
        Integer("calibration_samples", (1, 1024), default=16),
    )

    def required_components(self, settings):
        return ("tokenizer", "data") if settings.get("smoothquant") else self.requires

    def check_model(self, model: nn.Module) -> None:
        if not any(is_linear(m) for m in model.modules()):
            raise UnsupportedModelError("torch_dynamic quantizes nn.Linear (and transformers Conv1D) layers; this model has none.")

    def apply(self, model, settings, components):
        names = linears_to_quantize(model, settings["keep_full_precision"])
        if settings["smoothquant"]:
            from smashlib.data import calibration_batches
            from smashlib.smoothquant import smooth

            batches = calibration_batches(
                components, n_samples=settings["calibration_samples"], seq_len=CALIBRATION_SEQ_LEN,
                batch_size=CALIBRATION_BATCH,
            )
            with torch.no_grad():
                smooth(model, batches, alpha=settings["smoothquant_alpha"], only=names)
        quantize_linears(model, names)
        return model

    def prepare_for_loading(self, model, settings):
        quantize_linears(model, linears_to_quantize(model, settings["keep_full_precision"]), empty=True)
        return model
