"""depth_distiller: a student with fewer layers, trained on the attached data to behave like the original.

The student is the model itself with only ``keep_layers`` of its blocks (evenly spaced, always the first
and the last, or the ones that change their input most, measured on the data: ShortGPT's block
influence). A copy of the original is kept as the teacher for the run; the student's blocks and norms
are trained (embeddings and output head frozen: they are shared and a fifth of a small model) to match
the teacher's softened next-token distribution (``temperature``) and, since the widths are the same,
the teacher's hidden state where the next kept block expects its input. The result is an ordinary
transformers model with a smaller ``num_hidden_layers``.

It is the first group smash() applies, so a pruner, a quantizer and a compiler work on the student.
"""
from __future__ import annotations

import copy

from ConfigSpace import Categorical, Float, Integer
from torch import nn

from smashlib.algorithm import Algorithm
from smashlib.errors import HyperparameterValueError, UnsupportedModelError
from smashlib.pruning import (
    activation_scores,
    blocks_of,
    evenly_spaced,
    find_family,
    keep_layers,
    layer_removal_problem,
    supported_families,
)
from smashlib.training import TrainingOptions, fitting_length, train_to_match, training_batches

SELECTIONS = ("evenly_spaced", "importance")
#: Calibration batches used to measure layer importance.
IMPORTANCE_BATCHES = 8


def layers_to_keep(total: int, keep_setting: int) -> int:
    """``keep_layers`` resolved: 0 means half the layers (rounded up)."""
    return (total + 1) // 2 if keep_setting == 0 else int(keep_setting)


def hidden_pairs(kept: list[int], total: int) -> tuple[tuple[int, int], ...]:
    """(student index, teacher index) into ``hidden_states``: after student block j, the teacher's state
    that the next kept block reads (the input of original block kept[j+1]), and the final state last."""
    targets = [*kept[1:], total]
    return tuple((j + 1, target) for j, target in enumerate(targets))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter but the input and output embeddings'."""
    frozen = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            frozen.update(id(p) for p in module.parameters())
    return [p for p in model.parameters() if id(p) not in frozen]


class DepthDistiller(Algorithm):
    name = "depth_distiller"
    group = "distiller"
    requires = ("tokenizer", "data")
    summary = "Keep fewer layers and train them to match the original (logit KL + hidden states) on data."
    hyperparameters = (
        Integer("keep_layers", (0, 1024), default=0),
        Categorical("layer_selection", list(SELECTIONS), default="evenly_spaced"),
        Integer("steps", (0, 100_000), default=200),
        Float("learning_rate", (1e-6, 1e-2), default=1e-4, log=True),
        Integer("batch_size", (1, 64), default=4),
        Float("temperature", (0.5, 10.0), default=2.0),
        Float("hidden_weight", (0.0, 10.0), default=1.0),
        Integer("seed", (0, 2**31 - 1), default=0),
        Categorical("sequence_length", [256, 128, 512, 1024], default=256),
    )

    def required_components(self, settings):
        """Zero steps with evenly spaced layers is plain truncation: no data needed."""
        if settings["steps"] == 0 and settings["layer_selection"] == "evenly_spaced":
            return ()
        return self.requires

    def check_model(self, model: nn.Module) -> None:
        family = find_family(model)
        if family is None:
            raise UnsupportedModelError(
                f"depth_distiller drops layers of these architectures: {supported_families()}; "
                f"{type(model).__name__} is none of them."
            )
        if len(blocks_of(model, family)) < 2:
            raise UnsupportedModelError("depth_distiller needs a model with at least 2 layers to keep fewer of them.")
        problem = layer_removal_problem(model.config)
        if problem:
            raise UnsupportedModelError(f"depth_distiller cannot drop layers of {type(model).__name__}: {problem}.")

    def prepare_run(self, model, settings, components):
        total = len(blocks_of(model, find_family(model)))
        keep = layers_to_keep(total, settings["keep_layers"])
        if keep >= total:
            raise HyperparameterValueError(
                f"depth_distiller_keep_layers = {keep} keeps every layer of this {total}-layer model: "
                f"choose 1 to {total - 1} (0 keeps half, {(total + 1) // 2})."
            )

    def apply(self, model, settings, components):
        self.prepare_run(model, settings, components)
        family = find_family(model)
        total = len(blocks_of(model, family))
        keep = layers_to_keep(total, settings["keep_layers"])
        steps, batch_size, seed = int(settings["steps"]), int(settings["batch_size"]), int(settings["seed"])
        needs_data = bool(self.required_components(settings))
        batches = training_batches(
            components, max(steps, IMPORTANCE_BATCHES), batch_size, seed, fitting_length(model, int(settings["sequence_length"]))
        ) if needs_data else []
        model.eval()
        if settings["layer_selection"] == "importance":
            influence = activation_scores(model, family, None, False, batches[:IMPORTANCE_BATCHES]).layers
            kept = sorted(influence.argsort(descending=True, stable=True)[:keep].tolist())
        else:
            kept = evenly_spaced(total, keep)
        teacher = copy.deepcopy(model) if steps else None
        keep_layers(model, family, kept)
        if steps:
            options = TrainingOptions(
                steps=steps,
                learning_rate=float(settings["learning_rate"]),
                temperature=float(settings["temperature"]),
                seed=seed,
                hidden_weight=float(settings["hidden_weight"]),
                hidden_pairs=hidden_pairs(kept, total),
            )
            train_to_match(
                model, batches, options, trainable_parameters(model), teacher, desc="depth_distiller"
            )
        model.config.smashlib_kept_layers = kept  # which original layers the student is made of
        return model.eval()
