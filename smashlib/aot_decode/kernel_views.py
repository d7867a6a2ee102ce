"""Name the tensors of smashlib's kernel forms, so an exported graph takes them as inputs, not copies.

A :class:`~smashlib.layers.packed_int.PackedLinear` runs through a kernel object built from its saved
buffers (smashlib.layers.lowbit_kernels: the int8 matrix for the mat-vec kernel, float scales, ...). Those
tensors are attributes of a plain object, which ``torch.export`` lifts into the graph as unnamed constants,
so AOTInductor would build a second copy of the weights into its library. While exporting, each layer's
kernel is read through a :class:`KernelView` that fetches its tensors from the layer as non-persistent
buffers, which export names by their path (``model.layers.0.mlp.up_proj._kernel_weight``); afterwards the
layers are as they were (nothing is added to their state). :func:`kernel_constants` gives the same names
to the same tensors without exporting, for handing the model's own tensors to the loaded library.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch

from smashlib.layers.packed_int import PackedLinear

PREFIX = "_kernel_"


class KernelView:
    """A kernel object whose tensor attributes are read from its layer (where export can see them)."""

    def __init__(self, layer: torch.nn.Module, kernel: object, names: dict[str, str]) -> None:
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_kernel", kernel)
        object.__setattr__(self, "_names", names)

    def __getattr__(self, name: str):
        if name in self._names:
            return getattr(self._layer, self._names[name])
        method = getattr(type(self._kernel), name, None)
        if callable(method):  # the kernel's methods run on the view, so they read the layer's tensors too
            return types.MethodType(method, self)
        return getattr(self._kernel, name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return type(self._kernel).__call__(self, x)


def _kernel_tensor_names(layer: PackedLinear) -> dict[str, tuple[str, torch.Tensor]]:
    """attribute -> (the layer's name for it, tensor): the layer's own parameter or buffer where the kernel
    holds one of those (the bias), else a new name."""
    own = {id(t): n for n, t in [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)] if t is not None}
    return {attribute: (own.get(id(value), PREFIX + attribute), value)
            for attribute, value in vars(layer.kernel).items() if isinstance(value, torch.Tensor)}


def _packed_layers(module: torch.nn.Module) -> Iterator[tuple[str, PackedLinear]]:
    return ((name, m) for name, m in module.named_modules() if isinstance(m, PackedLinear))


def kernel_constants(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{path: tensor}`` of the kernel tensors that are not the layers' own state, named as in export."""
    constants = {}
    for path, layer in _packed_layers(module):
        for name, value in _kernel_tensor_names(layer).values():
            if name.startswith(PREFIX):
                constants[f"{path}.{name}" if path else name] = value
    return constants


@contextlib.contextmanager
def exposed_kernel_tensors(module: torch.nn.Module) -> Iterator[None]:
    """While exporting: every packed layer's kernel tensors as named buffers, read through a view."""
    swapped = []
    try:
        for _, layer in _packed_layers(module):
            kernel, tensors = layer.kernel, _kernel_tensor_names(layer)
            for name, value in tensors.values():
                if name.startswith(PREFIX):
                    layer.register_buffer(name, value, persistent=False)
            layer.__dict__["_kernel"] = KernelView(layer, kernel, {a: name for a, (name, _) in tensors.items()})
            swapped.append((layer, kernel, [name for name, _ in tensors.values() if name.startswith(PREFIX)]))
        yield
    finally:
        for layer, kernel, names in swapped:
            for name in names:
                del layer._buffers[name]
            layer.__dict__["_kernel"] = kernel
