"""Agreement with the base model: how far the smashed model's predictions moved, input by input.

Perplexity says whether quality dropped on average; agreement says whether the model still answers
the way the original did: KL(base || smashed) of the output distributions (nats per position) and
the share of positions where both pick the same top-1 token or class. Padding is excluded.
"""
from __future__ import annotations

import torch

from smashlib.evaluation.metrics import register_metric
from smashlib.evaluation.metrics.base import Metric, Quantity
from smashlib.evaluation.runtime import model_device, position_mask


@register_metric
class Agreement(Metric):
    name = "agreement"
    summary = "KL divergence from the base model's output distribution, and top-1 agreement with it."
    paired = True
    quantities = (
        Quantity("kl_divergence", "KL(base || model)", "nats", True),
        Quantity("top1_agreement", "top-1 agreement with base", "", False),
    )

    def skip_reason(self, model, inputs):
        return None if inputs else "needs inputs (data=...)"

    def measure_pair(self, reference, model, inputs):
        kl_total = agree = positions = 0.0
        for index, reference_batch in enumerate(inputs.on(model_device(reference))):
            expected = inputs.logits(reference, index)
            got = inputs.logits(model, index)
            if expected is None or got is None:
                raise ValueError("agreement needs models that return logits")
            got = got.to(expected.device)
            if got.shape != expected.shape:
                raise ValueError(f"the models' logits differ in shape: {tuple(expected.shape)} vs {tuple(got.shape)}")
            valid = position_mask(reference, reference_batch, expected)
            log_p = torch.log_softmax(expected.float(), dim=-1)
            log_q = torch.log_softmax(got.float(), dim=-1)
            p = log_p.exp()
            kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)  # 0 log 0 = 0
            kl_total += float((kl * valid).sum())
            agree += float(((expected.argmax(-1) == got.argmax(-1)) & valid).sum())
            positions += float(valid.sum())
        if not positions:
            return {"kl_divergence": None, "top1_agreement": None}
        return {"kl_divergence": max(0.0, kl_total / positions), "top1_agreement": agree / positions}
