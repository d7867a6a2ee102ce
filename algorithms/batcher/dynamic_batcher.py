"""dynamic_batcher: calls from many threads (or one list of prompts) served in padded batches.

Why: a CPU or GPU does a batch of 8 sequences in far less than 8 times the time of one (the weights
are read once per step for all rows), so callers that arrive together are answered sooner together.
Each caller still gets exactly its own result: generation is left-padded with an attention mask and
each row is cut where an unbatched call would stop; forward passes are right-padded and cut back.
A caller's bad input (ids outside the vocabulary, a wrong mask, text without a tokenizer) fails that
caller alone, in its own thread, before it joins a batch.

Runtime only: the batcher lives beside the model (see :mod:`smashlib.serving.attach`) and a
SmashedModel routes ``smashed(...)`` and ``smashed.generate(...)`` through it; loading attaches a new
one (with the saved tokenizer). A tokenizer is needed only for text prompts.
"""
from __future__ import annotations

from ConfigSpace import Integer

from smashlib.algorithm import Algorithm
from smashlib.errors import UnsupportedModelError
from smashlib.serving.attach import attach_batcher
from smashlib.serving.dynamic_batcher import DynamicBatcher


class DynamicBatcherAlgorithm(Algorithm):
    name = "dynamic_batcher"
    group = "batcher"
    summary = "Collect concurrent generate/forward calls into padded batches; each caller gets its own result."
    hyperparameters = (
        Integer("max_batch_size", (1, 256), default=8, log=True),
        Integer("max_wait_ms", (0, 10_000), default=10),
    )

    def check_model(self, model):
        config = getattr(model, "config", None)
        main_input = getattr(model, "main_input_name", "input_ids")
        if config is None or main_input != "input_ids" or getattr(config, "vocab_size", None) is None and not hasattr(
            config, "get_text_config"
        ):
            hint = " (for Whisper, choose cfg['batcher'] = 'ifw')" if main_input == "input_features" else ""
            raise UnsupportedModelError(
                f"dynamic_batcher batches text models that take token ids (input_ids), such as a transformers "
                f"*ForCausalLM or *ForSequenceClassification; {type(model).__name__} takes {main_input}{hint}."
            )

    def apply(self, model, settings, components):
        attach_batcher(model, DynamicBatcher(
            model, settings["max_batch_size"], settings["max_wait_ms"], tokenizer=components.tokenizer
        ))
        return model
