"""The exported decoding step: the model plus its KV cache buffers, one token in, logits out.

``DecodeStep(model, capacity)`` holds the model and one key and one value buffer per decoder layer. Its
forward takes the new token and a tensor whose length is the number of tokens already stored (only its
size is read: it becomes the graph's symbolic position, so one compiled graph serves every position up to
the capacity), writes the token's keys and values at that position in place and returns the logits.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from smashlib.aot_decode.cache import PreallocatedCache, allocate_buffers
from smashlib.aot_decode.kernel_views import exposed_kernel_tensors, kernel_constants
from smashlib.layers import int8_vnni_kernel


class DecodeStep(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, capacity: int) -> None:
        super().__init__()
        self.model = model
        buffers = allocate_buffers(model, capacity)
        for i, (keys, values) in enumerate(buffers):
            self.register_buffer(f"key_cache_{i}", keys, persistent=False)
            self.register_buffer(f"value_cache_{i}", values, persistent=False)
        self.cache = PreallocatedCache(buffers)

    def forward(self, input_ids: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.cache.layers):
            # export swaps the buffers for traced ones: the cache must read those
            layer.keys, layer.values = getattr(self, f"key_cache_{i}"), getattr(self, f"value_cache_{i}")
            layer.length = stored.shape[0]
        return self.model(input_ids=input_ids, cache=self.cache, use_cache=True).logits

    def restore_cache(self) -> None:
        """Point the cache at the real buffers again (tracing left it on export's stand-ins), emptied."""
        for i, layer in enumerate(self.cache.layers):
            layer.keys, layer.values = getattr(self, f"key_cache_{i}"), getattr(self, f"value_cache_{i}")
        self.cache.set_length(0)

    def constants(self) -> dict[str, torch.Tensor]:
        """Every tensor the compiled library reads, by the name export gave it: the model's own."""
        tensors = dict(self.named_parameters(remove_duplicate=False))  # a tied head is read under both names
        tensors.update(self.named_buffers(remove_duplicate=False))
        tensors.update({f"model.{name}": value for name, value in kernel_constants(self.model).items()})
        return tensors


def compile_step(step: DecodeStep, package: Path) -> None:
    """Export the step (at 2 stored tokens, the position symbolic) and build it with AOTInductor into
    ``package``, without the weights (they are handed over at load)."""
    example = (torch.zeros(1, 1, dtype=torch.long), torch.empty(2))
    try:
        with torch.no_grad(), exposed_kernel_tensors(step.model):
            exported = torch.export.export(step, example, strict=False,
                                           dynamic_shapes={"input_ids": None, "stored": {0: torch.export.Dim.AUTO}})
    finally:
        step.restore_cache()
    package.parent.mkdir(parents=True, exist_ok=True)
    partial = package.with_name(f"{package.stem}.{os.getpid()}.partial.pt2")
    configs = {"aot_inductor.package_constants_in_so": False,
               # the mat-vec kernels called as C functions, not through the proxy executor
               "aot_inductor.custom_ops_to_c_shims": int8_vnni_kernel.c_shims()}
    torch._inductor.aoti_compile_and_package(exported, package_path=str(partial), inductor_configs=configs)
    partial.replace(package)  # a reader never finds half a package
