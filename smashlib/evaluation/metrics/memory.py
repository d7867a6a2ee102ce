"""Peak memory of running the model: its weights plus the peak extra memory one forward pass takes.

On CUDA the allocator's own peak counter is exact. On CPU the process's resident memory (RSS) is
what the operating system charges; its peak during the forward pass is read from the kernel's
high-water mark (VmHWM, reset through /proc/self/clear_refs) where Linux allows, else sampled by a
thread every millisecond. Freed memory is handed back to the system first (``malloc_trim``), so a
model run after another is not flattered by memory the first one left in the allocator.

Both models of a comparison live in one process, so the process's total RSS would count both; the
value reported is the model's own weights plus what its forward pass adds on top.
"""
from __future__ import annotations

import ctypes
import gc
import threading
from pathlib import Path

import torch

from smashlib.evaluation.metrics import register_metric
from smashlib.evaluation.metrics.base import Quantity
from smashlib.evaluation.metrics.size import MB, weight_footprint
from smashlib.evaluation.metrics.timing import RepeatedMetric
from smashlib.evaluation.runtime import forward, model_device, model_inputs

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def release_freed_memory() -> None:
    """Collect garbage and return the allocator's free pages to the system (glibc only; a no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def current_rss() -> int:
    """Resident memory of this process, in bytes."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class _RssSampler:
    """Fallback peak tracker: a thread polling RSS while the measured code runs."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak = current_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> _RssSampler:  # noqa: PYI034 - private helper, never subclassed
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())


def peak_extra_cpu_bytes(run) -> int:
    """Peak RSS above the starting RSS while ``run()`` executes."""
    release_freed_memory()
    start = current_rss()
    if _reset_peak_rss():
        run()
        return max(0, _status_kib("VmHWM") * 1024 - start)
    with _RssSampler() as sampler:
        run()
    return max(0, sampler.peak - start)


def peak_extra_cuda_bytes(run, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - start)


@register_metric
class Memory(RepeatedMetric):
    name = "memory"
    summary = "Peak memory to run the first batch: weights plus the forward pass's peak (RSS on CPU, allocator on CUDA)."
    quantities = (
        Quantity("peak_memory_mb", "peak memory (weights + run)", "MB", True),
        Quantity("run_memory_mb", "peak memory of the run alone", "MB", True),
    )

    def __init__(self, warmup: int = 1) -> None:
        # one measured run; the warm-up makes lazily built kernels (packed weights) and caches part of
        # the steady state, not of the run
        super().__init__(runs=1, warmup=warmup)

    def measure(self, model, inputs):
        device = model_device(model)
        batch = model_inputs(inputs.on(device)[0])

        def run():
            forward(model, batch)

        if device.type == "cuda":
            extra = peak_extra_cuda_bytes(run, device)
        else:
            extra = peak_extra_cpu_bytes(run)
        return weight_footprint(model)[0], extra

    def summarize(self, samples, inputs):
        weights, extra = samples[-1]
        return {"peak_memory_mb": (weights + extra) / MB, "run_memory_mb": extra / MB}
