"""Quality of one model on the inputs: perplexity for language models, accuracy for classifiers.

Log-probabilities are taken in float32 whatever the model's dtype, so a bf16 model is judged on its
predictions, not on the rounding of its softmax. Perplexity is token-weighted over all batches:
exp(total negative log-likelihood / number of predicted tokens), padding excluded.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from smashlib.evaluation.metrics import register_metric
from smashlib.evaluation.metrics.base import Metric, Quantity
from smashlib.evaluation.runtime import is_causal_lm, is_encoder_decoder, model_device

IGNORE_INDEX = -100


def _has(inputs: Any, key: str) -> bool:
    return bool(inputs) and all(key in batch for batch in inputs.batches)


def token_nll(model: Any, batch: dict[str, Any], logits: torch.Tensor) -> tuple[float, int]:
    """(summed negative log-likelihood, number of predicted tokens) of one batch, from its logits.

    Causal LMs predict token t+1 from tokens <= t (targets: ``labels`` if given, else the input ids);
    encoder-decoder models predict their ``labels`` position by position.
    """
    if is_encoder_decoder(model):
        targets = batch["labels"]
        valid = targets != IGNORE_INDEX
    else:
        targets = batch.get("labels", batch["input_ids"])[:, 1:]
        logits = logits[:, :-1]
        valid = targets != IGNORE_INDEX
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            valid = valid & mask[:, 1:].bool()  # the target token must be real, not padding
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(-(picked * valid).sum()), int(valid.sum())


@register_metric
class Perplexity(Metric):
    name = "perplexity"
    summary = "Perplexity on the inputs (causal LMs; encoder-decoder models given labels); lower is better."
    quantities = (Quantity("perplexity", "perplexity", "", True),)

    def skip_reason(self, model, inputs):
        if not inputs:
            return "needs inputs (data=...)"
        if is_encoder_decoder(model):
            return None if _has(inputs, "labels") else "encoder-decoder perplexity needs labels in the inputs"
        if not is_causal_lm(model):
            return "perplexity is defined for language models (causal LM, or encoder-decoder with labels)"
        return None if _has(inputs, "input_ids") else "needs token inputs (input_ids)"

    def measure(self, model, inputs):
        total, count = 0.0, 0
        for index, batch in enumerate(inputs.on(model_device(model))):
            nll, tokens = token_nll(model, batch, inputs.logits(model, index))
            total += nll
            count += tokens
        return total, count

    def summarize(self, samples, inputs):
        total, count = samples[-1]
        return {"perplexity": math.exp(total / count) if count else None}


@register_metric
class Accuracy(Metric):
    name = "accuracy"
    summary = "Share of correct predictions (argmax of the logits against the inputs' labels), for classifiers."
    quantities = (Quantity("accuracy", "accuracy", "", False),)

    def skip_reason(self, model, inputs):
        if not _has(inputs, "labels"):
            return "needs labels in the inputs"
        if is_causal_lm(model):
            return "the model is a language model: see perplexity"
        return None

    def measure(self, model, inputs):
        correct = total = 0
        for index, batch in enumerate(inputs.on(model_device(model))):
            logits = inputs.logits(model, index)
            labels = batch["labels"]
            if logits is None or logits.dim() != labels.dim() + 1:
                raise ValueError(f"accuracy needs logits with one more dimension than the labels {tuple(labels.shape)}")
            valid = labels != IGNORE_INDEX
            correct += int(((logits.argmax(dim=-1) == labels) & valid).sum())
            total += int(valid.sum())
        return correct, total

    def summarize(self, samples, inputs):
        correct, total = samples[-1]
        return {"accuracy": correct / total if total else None}
