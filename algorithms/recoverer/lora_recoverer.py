"""lora_recoverer: train LoRA adapters on the attached data to win back what pruning or quantization lost.

smash() applies it after the distiller, pruner and quantizer. Before any of them runs it keeps a copy of
the original model (``prepare_run``), and the adapters learn to match the original's next-token
distributions (KL, ``temperature``), which teaches far more per token than the data's next tokens alone;
with ``lora_recoverer_teacher="none"``, or when the copy cannot be made, the loss is the ordinary
next-token loss. Adapters over ``nn.Linear`` / ``Conv1D`` (pruned, fp32, bf16 weights) are PEFT's and
are merged into the weights afterwards: the model keeps its size and speed. Over quantized layers they
stay beside the layer (see smashlib.training.lora), are saved with the model and restored at load.
"""
from __future__ import annotations

import copy
import warnings

from ConfigSpace import Categorical, Float, Integer

from smashlib.algorithm import Algorithm
from smashlib.data.calibration import with_decoder_inputs
from smashlib.errors import UnsupportedModelError
from smashlib.targets import is_linear, target_modules_hyperparameter
from smashlib.training import TrainingOptions, fitting_length, train_to_match, training_batches
from smashlib.training.lora import (
    adaptable,
    gradients_through_quantized,
    inject_peft,
    is_quantized_linear,
    merge_peft,
    wrap_quantized,
)

TEACHERS = ("original", "none")
#: Models whose forward in training mode hands its projections' raw weights to a fused kernel
#: (``mamba_inner_fn(..., x_proj.weight, dt_proj.weight, out_proj.weight)``), past any adapter or quantized layer.
TRAINS_ON_RAW_WEIGHTS = ("mamba", "falcon_mamba", "mamba2")


class LoraRecoverer(Algorithm):
    name = "lora_recoverer"
    group = "recoverer"
    requires = ("tokenizer", "data")
    needs_packages = ("peft>=0.15",)
    extra = "peft"
    target_layer_kind = "nn.Linear, Conv1D or quantized linear layers"
    summary = "Train LoRA adapters against the original model's logits; merged into float weights."
    hyperparameters = (
        Integer("rank", (1, 512), default=16, log=True),
        Float("alpha", (1.0, 1024.0), default=32.0, log=True),
        Integer("steps", (1, 100_000), default=200, log=True),
        Float("learning_rate", (1e-6, 1e-2), default=5e-4, log=True),
        Integer("batch_size", (1, 64), default=4),
        Float("temperature", (0.5, 10.0), default=1.0),
        Categorical("teacher", list(TEACHERS), default="original"),
        Integer("seed", (0, 2**31 - 1), default=0),
        Categorical("sequence_length", [256, 128, 512, 1024], default=256),
        target_modules_hyperparameter("all_but_output_head"),
    )

    def accepts_layer(self, module):
        return adaptable(module)

    def check_model(self, model):
        """Training runs the model on token batches alone (smashlib.training): a decoder-only model. Refused
        here, before a quantizer has run, rather than failing in the first training step after it."""
        config = getattr(model, "config", None)
        builds_decoder_inputs = callable(getattr(model, "prepare_decoder_input_ids_from_labels", None))
        reads_text = getattr(model, "main_input_name", "input_ids") == "input_ids"
        if getattr(config, "is_encoder_decoder", False) and not (builds_decoder_inputs and reads_text):
            raise UnsupportedModelError(
                f"lora_recoverer trains on batches of text tokens; {type(model).__name__} is an encoder-decoder model "
                "that cannot build its decoder inputs from them (text encoder-decoders like T5 and BART can; Whisper "
                "reads speech)."
            )
        if getattr(config, "model_type", None) in TRAINS_ON_RAW_WEIGHTS:
            raise UnsupportedModelError(
                f"lora_recoverer cannot train {type(model).__name__}: in training mode its layers pass their "
                "projections' raw weights to a fused kernel, past LoRA adapters and quantized layers."
            )

    def prepare_run(self, model, settings, components):
        """Keep the untouched model as the teacher of this run (smash() drops it when the run ends)."""
        if settings["teacher"] != "original":
            return
        try:
            teacher = copy.deepcopy(model).eval()
        except (RuntimeError, MemoryError, TypeError) as error:
            warnings.warn(
                f"lora_recoverer could not keep a copy of the original model as teacher ({type(error).__name__}: "
                f"{error}); it trains on the next-token loss instead.",
                stacklevel=2,
            )
            return
        for p in teacher.parameters():
            p.requires_grad_(False)
        components.kept[self.name] = teacher

    def apply(self, model, settings, components):
        teacher = components.kept.pop(self.name, None)
        names = self.target_names(model, settings)
        rank, alpha = int(settings["rank"]), float(settings["alpha"])
        quantized = [n for n in names if is_quantized_linear(model.get_submodule(n))]
        floats = [n for n in names if is_linear(model.get_submodule(n))]
        for p in model.parameters():
            p.requires_grad_(False)
        parameters = (inject_peft(model, floats, rank, alpha) if floats else []) + wrap_quantized(
            model, quantized, rank, alpha
        )
        steps, batch_size, seed = int(settings["steps"]), int(settings["batch_size"]), int(settings["seed"])
        options = TrainingOptions(steps, float(settings["learning_rate"]), float(settings["temperature"]), seed)
        batches = training_batches(components, steps, batch_size, seed, fitting_length(model, int(settings["sequence_length"])))
        if getattr(model.config, "is_encoder_decoder", False):  # T5, BART: the text, shifted right, is the decoder's
            batches = [with_decoder_inputs(model, batch) for batch in batches]
        with gradients_through_quantized(model):
            train_to_match(model, batches, options, parameters, teacher, desc="lora_recoverer")
        del teacher
        if floats:
            merge_peft(model)
        return model.eval()

    def prepare_for_loading(self, model, settings):
        """Merged adapters are in the weights; those over quantized layers are wrapped again to receive theirs."""
        quantized = [n for n in self.target_names(model, settings) if is_quantized_linear(model.get_submodule(n))]
        wrap_quantized(model, quantized, int(settings["rank"]), float(settings["alpha"]))
        return model
