"""Put a cacher's function in front of a model's ``generate``, and find the keyword generate takes a cache by.

The wrapper is an attribute of the model instance, so ``model.generate(...)``, a SmashedModel and a
batcher (which calls ``model.generate`` on each batch) all go through it, while the model's class,
weights and saved files stay those of the plain transformers model. Applying again (at load) replaces
the wrapper instead of stacking a second one.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

HOOK_OWNER = "_smashlib_generate_hook"


def install_generate_hook(model: torch.nn.Module, owner: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``model.generate`` by ``make(original_generate)``; ``owner`` names the algorithm for repr and tests."""
    model.__dict__.pop("generate", None)  # drop an earlier hook: wrap the class's own generate
    original = model.generate
    wrapped = make(original)
    wrapped.__dict__[HOOK_OWNER] = owner
    model.__dict__["generate"] = wrapped


def generate_hook_owner(model: torch.nn.Module) -> str | None:
    hook = model.__dict__.get("generate")
    return getattr(hook, HOOK_OWNER, None) if hook is not None else None


def cache_keyword(model: torch.nn.Module) -> str:
    """``cache`` (transformers 5) or ``past_key_values`` (4.x): the keyword generate passes a KV cache by."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def caller_passed_cache(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None
