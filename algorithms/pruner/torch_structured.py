"""torch_structured: remove whole KV groups, MLP channels or layers, so the model really gets smaller and faster.

Unlike torch_unstructured (zeros in full-size matrices), every cut here shrinks a matrix: q/k/v/o lose the
rows and columns of the removed KV groups (a key/value head with the query heads sharing it; ``head_dim``
stays), the MLP's up/gate lose rows and its down projection the matching columns, and removed layers leave
the block list. The model's config is updated (``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``intermediate_size``, ``num_hidden_layers``), so the saved folder is an ordinary transformers
model: ``AutoModelForCausalLM.from_pretrained`` loads it. Widths stay uniform across layers because one
config field holds one width for all of them.

Pruning removes knowledge; pair it with ``recoverer="lora_recoverer"`` to train some of it back.
"""
from __future__ import annotations

from ConfigSpace import Categorical, Float, Integer
from torch import nn

from smashlib.algorithm import Algorithm
from smashlib.errors import SmashConfigError, UnsupportedModelError
from smashlib.pruning import TARGETS, apply_plan, find_family, layer_removal_problem, make_plan, supported_families

#: Tokens per calibration sequence when importance is measured on data.
SEQUENCE_LENGTH = 256


class TorchStructured(Algorithm):
    name = "torch_structured"
    group = "pruner"
    summary = "Remove whole KV groups, MLP channels or layers (smaller matrices, smaller config.json)."
    requires = ("tokenizer", "data")
    hyperparameters = (
        Float("sparsity", (0.0, 0.95), default=0.25),
        Categorical("target", list(TARGETS), default="both"),
        Categorical("importance", ["magnitude", "activation"], default="activation"),
        Integer("calibration_samples", (1, 1024), default=32, log=True),
    )

    def required_components(self, settings):
        """Magnitude needs only the weights; activation and layer importance are measured on data."""
        if settings["importance"] == "magnitude" and settings["target"] != "layers":
            return ()
        return self.requires

    def check_model(self, model: nn.Module) -> None:
        if find_family(model) is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            raise UnsupportedModelError(
                f"torch_structured knows how to cut these architectures: {supported_families()}; "
                f"{type(model).__name__} (model_type={model_type!r}) is none of them. Use torch_unstructured "
                "(any Linear layers) instead."
            )

    def check_settings(self, settings, device):
        if settings["sparsity"] <= 0:
            raise SmashConfigError("torch_structured_sparsity must be above 0 (0 removes nothing); e.g. 0.25.")

    def prepare_run(self, model, settings, components):
        """The check that needs both the model and the settings, run by smash() before anything is cut."""
        family = find_family(model)
        problem = layer_removal_problem(model.config)
        if settings["target"] == "layers" and problem:
            raise UnsupportedModelError(f"torch_structured cannot remove layers of {type(model).__name__}: {problem}.")
        if settings["target"] in ("mlp", "both") and not family.prunes_channels:
            raise UnsupportedModelError(
                f"torch_structured cannot remove MLP channels from {family.name}: {family.no_channels_reason}. "
                "Set torch_structured_target='layers'."
            )
        if settings["target"] in ("heads", "both") and not family.prunes_heads:
            raise UnsupportedModelError(
                f"torch_structured cannot remove heads from {family.name}: {family.no_heads_reason}. "
                "Set torch_structured_target='mlp' or 'layers'."
            )

    def apply(self, model, settings, components):
        self.prepare_run(model, settings, components)
        family = find_family(model)
        plan = make_plan(model, family, settings["target"], float(settings["sparsity"]))
        batches = None
        if self.required_components(settings):
            from smashlib.data import calibration_batches
            from smashlib.training import fitting_length

            length = fitting_length(model, SEQUENCE_LENGTH)
            batches = calibration_batches(components, int(settings["calibration_samples"]), length, 4)
        was_training = model.training
        model.eval()
        apply_plan(model, family, plan, settings["importance"], batches)
        return model.train(was_training)
