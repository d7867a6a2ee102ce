"""ifw: batched long-form speech recognition for Whisper (``WhisperForConditionalGeneration``).

Audio of any length is cut at the quietest moment before every ``chunk_length`` seconds (never
mid-word where there is a pause; see smashlib.speech.chunking), and ``group_size`` chunks, from one
input or many, are decoded together in one batched ``generate``. ``weight_bits=16`` keeps the weights
in bfloat16 on the CPU (fp16 kernels are slow there; bf16 ones use AVX512-BF16/AMX where present)
and float16 on CUDA; 32 keeps float32.

After ``smash``, ``smashed.transcribe(audio)`` returns a Transcription (``.text``, ``.segments`` with
``return_timestamps=True``); ``smashed(audio)`` does the same, while tensors still reach the model's
forward, so ``generate`` and training code are unaffected. Runtime only: loading applies it again
with the saved processor and tokenizer.
"""
from __future__ import annotations

from ConfigSpace import Categorical, Integer

from smashlib.algorithm import Algorithm
from smashlib.errors import SmashError, UnsupportedModelError

#: Quantizers own the dtypes of their layers, and compiling would trace ifw's dispatching forward:
#: ifw casts the whole model itself, so it does not combine with them.
LAYER_OWNING = ("half", "torch_dynamic", "llm_int8", "bnb_4bit", "gptq", "hqq", "quanto", "torchao", "torch_compile")


def _is_speech_input(value) -> bool:
    import os

    import numpy as np

    if isinstance(value, (str, os.PathLike, dict, np.ndarray)):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and _is_speech_input(value[0])


class Ifw(Algorithm):
    name = "ifw"
    group = "batcher"
    requires = ("tokenizer", "processor")
    incompatible_with = LAYER_OWNING
    summary = ("Batched long-form Whisper transcription: audio cut at silences into chunks, decoded "
               "group_size at a time, bf16/fp16 weights.")
    hyperparameters = (
        Integer("chunk_length", (5, 30), default=30),
        Integer("group_size", (1, 64), default=8),
        Categorical("weight_bits", [16, 32], default=16),
    )

    def check_model(self, model):
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) != "whisper" or not hasattr(model, "generate") or not hasattr(
            model, "get_encoder"
        ):
            raise UnsupportedModelError(
                f"ifw transcribes speech with a Whisper model (WhisperForConditionalGeneration); got "
                f"{type(model).__name__}: load one with WhisperForConditionalGeneration.from_pretrained(...) "
                "(smashlib.bundled.load_whisper_tiny_en() offline), or use another batcher."
            )

    @staticmethod
    def _check_components(components) -> None:
        processor, tokenizer = components.processor, components.tokenizer
        if not hasattr(getattr(processor, "feature_extractor", None), "sampling_rate"):
            raise SmashError(
                f"ifw needs a Whisper processor (with a feature_extractor), got {type(processor).__name__}: "
                "cfg.add_processor(whisper_id) with the model's folder or Hub id."
            )
        if not hasattr(tokenizer, "batch_decode"):
            raise SmashError(f"ifw needs the Whisper tokenizer, got {type(tokenizer).__name__}: cfg.add_tokenizer(whisper_id).")

    def apply(self, model, settings, components):
        import torch

        from smashlib.speech.transcriber import IfwTranscriber

        self._check_components(components)
        device = next(model.parameters()).device
        if settings["weight_bits"] == 16:
            dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        else:
            dtype = torch.float32
        model.to(dtype)
        transcriber = IfwTranscriber(model, components.processor, components.tokenizer,
                                     chunk_length=settings["chunk_length"], group_size=settings["group_size"],
                                     dtype=dtype)
        # plain attributes, not modules: state_dict and save_pretrained never see them
        model.__dict__["transcribe"] = transcriber
        forward = model.forward  # as it is now: keeps hooks others installed on the instance (accelerate)

        def forward_or_transcribe(*args, **kwargs):
            if args and _is_speech_input(args[0]):
                return transcriber(*args, **kwargs)
            return forward(*args, **kwargs)

        model.__dict__["forward"] = forward_or_transcribe
        return model
