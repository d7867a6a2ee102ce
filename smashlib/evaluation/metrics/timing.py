"""Speed of the forward pass: latency percentiles of one batch, and throughput over all the inputs.

For a language model the forward pass over the prompt is the prefill; decode speed is measured by
the ``generation`` metric. Timestamps are taken after ``torch.cuda.synchronize`` on a GPU, so they
measure the work rather than its launch.
"""
from __future__ import annotations

import numpy as np

from smashlib.evaluation.metrics import register_metric
from smashlib.evaluation.metrics.base import Metric, Quantity
from smashlib.evaluation.runtime import forward, model_device, model_inputs, now


class RepeatedMetric(Metric):
    """Base of the metrics that run the model ``runs`` times per model (interleaved by the runner) after
    ``warmup`` untimed forward passes of the first batch (lazy kernels, packed weights, caches)."""

    def __init__(self, runs: int, warmup: int) -> None:
        self.runs = runs
        self.warmup = warmup

    @property
    def rounds(self) -> int:
        return self.runs

    def skip_reason(self, model, inputs):
        return None if inputs else "needs inputs (data=...)"

    def warm_up(self, model, inputs):
        batch = model_inputs(inputs.on(model_device(model))[0])
        for _ in range(self.warmup):
            forward(model, batch)


@register_metric
class Latency(RepeatedMetric):
    name = "latency"
    summary = "Forward-pass (prefill) latency of the first batch: p50, p90, p99 after warm-up runs."
    quantities = (
        Quantity("latency_p50_ms", "latency p50", "ms", True),
        Quantity("latency_p90_ms", "latency p90", "ms", True),
        Quantity("latency_p99_ms", "latency p99", "ms", True),
    )

    def __init__(self, runs: int = 10, warmup: int = 2) -> None:
        super().__init__(runs, warmup)

    def measure(self, model, inputs) -> float:
        device = model_device(model)
        batch = model_inputs(inputs.on(device)[0])
        start = now(device)
        forward(model, batch)
        return (now(device) - start) * 1000.0

    def summarize(self, samples, inputs):
        p50, p90, p99 = np.percentile(np.asarray(samples, dtype=float), [50, 90, 99])
        return {"latency_p50_ms": float(p50), "latency_p90_ms": float(p90), "latency_p99_ms": float(p99)}


@register_metric
class Throughput(RepeatedMetric):
    name = "throughput"
    summary = "Samples (and tokens) per second over one pass through every batch; median of the rounds."
    quantities = (
        Quantity("throughput_samples_per_s", "throughput", "samples/s", False),
        Quantity("throughput_tokens_per_s", "throughput", "tokens/s", False),
    )

    def __init__(self, runs: int = 3, warmup: int = 1) -> None:
        super().__init__(runs, warmup)

    def measure(self, model, inputs) -> float:
        device = model_device(model)
        batches = [model_inputs(batch) for batch in inputs.on(device)]
        start = now(device)
        for batch in batches:
            forward(model, batch)
        return now(device) - start

    def summarize(self, samples, inputs):
        seconds = float(np.median(samples))
        tokens = inputs.num_tokens
        return {
            "throughput_samples_per_s": inputs.num_samples / seconds,
            "throughput_tokens_per_s": tokens / seconds if tokens else None,
        }
