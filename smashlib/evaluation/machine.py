"""What machine a report was measured on: a speed means little without the CPU, threads and versions."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(devices: set[str] | None = None) -> dict[str, Any]:
    """CPU model, cores usable by this process, torch threads, GPU (when used) and library versions."""
    from smashlib import __version__

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(terse=True),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "smashlib": __version__,
    }
    if devices and "cuda" in devices and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for the foot of a report table."""
    parts = [f"{info.get('cpu', '?')} ({info.get('cpu_cores', '?')} cores, {info.get('torch_threads', '?')} torch threads)"]
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']} (CUDA {info.get('cuda')})")
    parts.append(f"torch {info.get('torch')}, transformers {info.get('transformers')}, smashlib {info.get('smashlib')}")
    return "; ".join(parts)
