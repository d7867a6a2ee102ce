"""quantized_kv: generate with the KV cache kept in 4 or 8 bits, for long generations in less memory.

Why: at long contexts the KV cache, not the weights, fills memory (SmolLM2-135M: 46 KB per token in
fp32, 94 MB at 2048 tokens for one sequence). transformers' QuantizedCache (KIVI-style) keeps the most
recent ``residual_length`` tokens in full precision and the rest quantized group-wise (groups of
``group_size`` values, capped to divide the head size), through the hqq (4 or 8 bits) or quanto (4 bits) backend; each step dequantizes the
old part to attend over it, so it trades some speed for memory.

Applies to ``generate`` calls that pass no cache of their own (a wrapper passes a fresh QuantizedCache);
plain forward calls keep the default cache. Runtime only: nothing is saved, loading applies it again.
"""
from __future__ import annotations

import importlib.util
import math

from ConfigSpace import Categorical, Integer

from smashlib.algorithm import Algorithm
from smashlib.caches.generate_hook import cache_keyword, caller_passed_cache, install_generate_hook
from smashlib.caches.model_checks import check_causal_lm_with_full_attention
from smashlib.errors import HyperparameterValueError, MissingPackageError

#: backend -> (module it imports, pip extra, bit widths transformers' layer for it accepts among 4 and 8)
BACKENDS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "hqq": ("hqq", "hqq", (4, 8)),
    "quanto": ("optimum.quanto", "quanto", (4,)),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (optimum)
        return False


def group_size_for(model, group_size: int) -> int:
    """``group_size`` capped to divide the model's head size.

    Why: hqq needs the number of cached values to be a multiple of the group size, and a cache holds
    batch x heads x tokens x head size values; a group that divides the head size divides every cache,
    whatever the batch and the number of tokens (SmolLM2: head size 64, so 64 is kept).
    """
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return math.gcd(group_size, head_size)


def quantized_cache_factory(model, settings):
    """A function that makes a fresh QuantizedCache for ``model`` with these settings."""
    from transformers import QuantizedCache

    group_size = group_size_for(model, settings["group_size"])

    def make():
        return QuantizedCache(
            backend=settings["backend"], config=model.config, nbits=settings["bits"],
            q_group_size=group_size, residual_length=settings["residual_length"],
        )

    return make


def quantized_kv_generate(model, original, make_cache):
    keyword = cache_keyword(model)

    def generate(*args, **kwargs):
        if not caller_passed_cache(kwargs) and kwargs.get("use_cache") is not False:
            kwargs[keyword] = make_cache()
        return original(*args, **kwargs)

    return generate


class QuantizedKV(Algorithm):
    name = "quantized_kv"
    group = "cacher"
    summary = "Keep generate's KV cache in 4 or 8 bits (transformers' QuantizedCache, hqq or quanto backend)."
    hyperparameters = (
        Categorical("bits", [4, 8], default=4),
        Categorical("backend", ["hqq", "quanto"], default="hqq"),
        Integer("residual_length", (1, 8192), default=128, log=True),
        Categorical("group_size", [64, 32, 128], default=64),
    )

    def check_settings(self, settings, device):
        module, extra, bits = BACKENDS[settings["backend"]]
        if settings["bits"] not in bits:
            others = [name for name, (_, _, allowed) in BACKENDS.items() if settings["bits"] in allowed]
            raise HyperparameterValueError(
                f"quantized_kv_backend '{settings['backend']}' keeps the cache in {' or '.join(map(str, bits))} bits, "
                f"not {settings['bits']}: set cfg['quantized_kv_bits'] = {bits[0]} or cfg['quantized_kv_backend'] = "
                f"'{others[0]}'."
            )
        if not _installed(module):
            raise MissingPackageError(
                f"quantized_kv with backend '{settings['backend']}' needs the {module} package: "
                f"pip install 'smashlib[{extra}]', or choose another quantized_kv_backend."
            )

    def check_model(self, model):
        check_causal_lm_with_full_attention(model, self.name)

    def apply(self, model, settings, components):
        self.check_settings(settings, "cpu")  # also at load, where smash()'s checks did not run
        make_cache = quantized_cache_factory(model, settings)
        install_generate_hook(model, self.name, lambda original: quantized_kv_generate(model, original, make_cache))
        return model
