"""QuantizedLinear: the base of smashlib's own compressed linear layers (PackedLinear, HQQPackedLinear,
Int8DynamicLinear).

What they share, in one place:

- ``in_features`` / ``out_features`` and :meth:`dequantize` (the float weight the stored tensors stand
  for, ``(out_features, in_features)`` as nn.Linear holds it), so other code (LoRA recovery, exports,
  comparisons) can read any of them the same way;
- one derived-kernel cache: :meth:`build_kernel` makes the form a kernel wants from the saved buffers
  (never saved itself: it depends on the machine), :attr:`kernel` builds it on first use, and
  :meth:`invalidate_kernel` drops it. It is invalidated in one place, :meth:`_buffers_changed`, which runs
  whenever a buffer is assigned, a state dict is loaded (a public ``register_load_state_dict_pre_hook``)
  or the module is moved or cast (``_apply``), so a stale kernel can never run.

Buffer names stay those each layer has always saved, so folders written before this base still load.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class QuantizedLinear(nn.Module):
    """Base of the compressed linear layers; subclasses implement :meth:`dequantize` and, if they run a
    derived kernel form, :meth:`build_kernel`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._kernel: Any = None
        self.register_load_state_dict_pre_hook(QuantizedLinear._on_load)

    # ------------------------------------------------------------------ what subclasses implement
    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight, ``(out_features, in_features)``."""
        raise NotImplementedError

    def build_kernel(self) -> Any:
        """The kernel form derived from the buffers (None: the layer runs without one)."""
        return None

    # ------------------------------------------------------------------ the one kernel cache
    @property
    def kernel(self) -> Any:
        if self._kernel is None:
            self._kernel = self.build_kernel()
        return self._kernel

    def invalidate_kernel(self) -> None:
        self.__dict__["_kernel"] = None

    def _buffers_changed(self) -> None:
        """Every change of the stored tensors comes through here."""
        self.invalidate_kernel()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if "_buffers" in self.__dict__ and name in self._buffers:
            self._buffers_changed()

    @staticmethod
    def _on_load(module: QuantizedLinear, *args: Any, **kwargs: Any) -> None:
        module._buffers_changed()

    def _apply(self, fn, recurse=True):
        self._buffers_changed()  # moving or casting invalidates the derived form
        return super()._apply(fn, recurse)
