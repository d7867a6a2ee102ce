"""The compiled step at run time: found in (or built into) smashlib's cache, and hooked into generate.

:func:`attach` is what ``torch_compile_target="aot_decode"`` does, at smash time and again at every load:
it finds the compiled library for this model in the cache folder (building it the first time: an export
and an AOTInductor build, about 70 s for SmolLM2-135M on 2 cores), hands it the model's own tensors and
wraps ``generate`` and ``forward``:

- ``generate`` passes the preallocated cache when the call fits it (one sequence, no cache of the caller's,
  greedy or sampled but not beam search, prompt plus new tokens within the capacity) and another call is
  not using it; otherwise it runs as before, untouched.
- ``forward`` sends a one-token step on that cache to the compiled library (a C++ call); any other call
  (prefill, other caches, padding, asking for attentions or hidden states) runs the model's forward.
"""
from __future__ import annotations

import functools
import hashlib
import json
import threading
import warnings
from pathlib import Path

import torch

from smashlib.aot_decode.step import DecodeStep, compile_step
from smashlib.layers import int8_vnni_kernel

#: What a built library depends on besides the model: this package's code and the kernels' C functions.
SOURCES = [*sorted(Path(__file__).parent.glob("*.py")), int8_vnni_kernel.SOURCE]
#: Config entries that say where a model came from or how it was saved, not what its step computes (the
#: tensors' names, dtypes and shapes are keyed separately).
PROVENANCE = ("_name_or_path", "transformers_version", "architectures", "quantization_config", "dtype", "torch_dtype",
              "_commit_hash", "_attn_implementation_autoset")


def package_path(model: torch.nn.Module, capacity: int) -> Path:
    """Where the compiled step for this model lives: keyed by everything the generated code depends on."""
    import transformers

    from smashlib.bundled import cache_root
    from smashlib.layers import cpu_features

    described = {
        "config": {k: v for k, v in model.config.to_dict().items() if k not in PROVENANCE},
        "modules": [(name, type(m).__qualname__, getattr(getattr(m, "kernel", None), "name", None))
                    for name, m in model.named_modules()],
        "tensors": [(name, str(t.dtype), tuple(t.shape)) for name, t in [*model.named_parameters(), *model.named_buffers()]],
        "capacity": capacity,
        "versions": [torch.__version__, transformers.__version__],
        "cpu": sorted(cpu_features.cpu_flags()),
        "sources": [hashlib.sha256(p.read_bytes()).hexdigest() for p in SOURCES],
    }
    key = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return cache_root() / "aot_decode" / f"torch-{torch.__version__}" / f"{key}.pt2"


class CompiledDecoding:
    """The loaded library, the cache it shares with eager prefill, and the one-token step."""

    def __init__(self, model: torch.nn.Module, capacity: int) -> None:
        self.step = DecodeStep(model, capacity)
        self.package = package_path(model, capacity)
        self.built = not self.package.is_file()
        if self.built:
            compile_step(self.step, self.package)
        int8_vnni_kernel.unavailable_reason()  # the kernels' C functions loaded before the library that calls them
        runner = torch._inductor.aoti_load_package(str(self.package))
        wanted = runner.get_constant_fqns()
        tensors = self.step.constants()
        missing = [name for name in wanted if name not in tensors]
        if missing:
            raise RuntimeError(f"the compiled decoding step {self.package} reads tensors this model lacks: {missing[:3]}")
        # user_managed: the library reads the model's tensors in place (no copy of the weights); they are
        # kept referenced here, so a model moved or cast later cannot leave the library reading freed memory
        self._constants = {name: tensors[name] for name in wanted}
        runner.load_constants(self._constants, check_full_update=True, user_managed=True)
        self._run = runner.loader.boxed_run  # AOTICompiledModel.__call__ re-parses its call spec every call
        self.cache = self.step.cache
        self._stored = torch.empty(capacity)  # its first n entries: the "n tokens stored" input
        self.lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def takes(self, kwargs: dict) -> bool:
        """Whether a forward call is a plain one-token step on this cache that the library computes."""
        ids, stored = kwargs.get("input_ids"), self.cache.get_seq_length()
        if ids is None or tuple(ids.shape) != (1, 1) or not 0 < stored < self.capacity - 1:
            return False
        if kwargs.get("inputs_embeds") is not None or kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            return False
        mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if mask is not None and not bool(mask.all()):
            return False
        return positions is None or int(positions.reshape(-1)[-1]) == stored

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        stored = self.cache.get_seq_length()
        logits = self._run([input_ids, self._stored[:stored]])[0]
        self.cache.set_length(stored + 1)
        return logits

    def is_current(self) -> bool:
        """Whether the library still reads the model's tensors (not if the model was moved, cast or reloaded
        into since: its tensors, or its packed layers' kernels, are then new ones)."""
        tensors = self.step.constants()
        return all(tensors.get(name) is value for name, value in self._constants.items())

    def fits(self, args: tuple, kwargs: dict, generation_config) -> bool:
        """Whether a generate call can run on the preallocated cache."""
        ids = args[0] if args else kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or kwargs.get("inputs_embeds") is not None:
            return False
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            return False
        chosen = kwargs.get("generation_config") or generation_config
        setting = {name: kwargs.get(name, getattr(chosen, name, None))
                   for name in ("num_beams", "num_return_sequences", "max_new_tokens", "max_length", "cache_implementation",
                                "use_cache")}
        if (setting["num_beams"] or 1) != 1 or (setting["num_return_sequences"] or 1) != 1 or setting["use_cache"] is False:
            return False
        if setting["cache_implementation"] is not None or kwargs.get("assistant_model") is not None:  # its own cache
            return False
        total = ids.shape[1] + setting["max_new_tokens"] if setting["max_new_tokens"] is not None else setting["max_length"]
        return total is not None and total < self.capacity - 1


def attach(model: torch.nn.Module, capacity: int) -> CompiledDecoding:
    """Build or load the compiled step and wrap ``model.generate`` and ``model.forward`` (see the module)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    detach(model)
    decoding = CompiledDecoding(model, capacity)
    plain_forward, plain_generate = model.forward, model.generate

    @functools.wraps(plain_forward)
    def forward(*args, **kwargs):
        if not args and kwargs.get("cache") is decoding.cache and decoding.takes(kwargs):
            return CausalLMOutputWithPast(logits=decoding.logits(kwargs["input_ids"]), cache=decoding.cache)
        return plain_forward(*args, **kwargs)

    @functools.wraps(plain_generate)
    def generate(*args, **kwargs):
        if not decoding.fits(args, kwargs, model.generation_config) or not decoding.lock.acquire(blocking=False):
            return plain_generate(*args, **kwargs)
        if not decoding.is_current():
            decoding.lock.release()
            warnings.warn("the model's tensors changed after its decoding step was compiled (moved, cast or loaded "
                          "into): generate runs eagerly; smash or load it again to compile for the new tensors",
                          stacklevel=2)
            return plain_generate(*args, **kwargs)
        try:
            decoding.cache.reset()
            return plain_generate(*args, cache=decoding.cache, **kwargs)
        finally:
            decoding.lock.release()

    model.forward, model.generate = forward, generate
    model.__dict__["_smashlib_compiled_decoding"] = decoding
    return decoding


def detach(model: torch.nn.Module) -> None:
    """Undo :func:`attach` (the model's own forward and generate again)."""
    if model.__dict__.pop("_smashlib_compiled_decoding", None) is not None:
        model.__dict__.pop("forward", None)
        model.__dict__.pop("generate", None)


def compiled_decoding(model: torch.nn.Module) -> CompiledDecoding | None:
    return model.__dict__.get("_smashlib_compiled_decoding")
