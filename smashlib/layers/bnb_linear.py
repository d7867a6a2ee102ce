"""bitsandbytes linear layers whose state dict is plain tensors that load back exactly, even after inference.

bitsandbytes' own ``Linear4bit`` and ``Linear8bitLt`` are built to be quantized by ``.to(device)`` and
loaded by transformers' loader; two things in them break smashlib's save -> load round trip:

* **4-bit after a CPU forward pass (bitsandbytes 0.50).** On a CPU with AVX512-BF16, the first
  inference call of ``Linear4bit`` repacks the weight in place for a faster bf16 kernel
  (``functional._convert_weight_packed_for_cpu``): the nibbles are reordered, the double-quantized
  absmax is expanded, cast to bfloat16 and transposed. ``_save_to_state_dict`` then tries to undo it
  (``_convert_weight_packed_for_cpu_inverse``), but that inverse is only "best effort": without double
  quant it leaves absmax as a transposed bfloat16 matrix (the saved layer is corrupt, and so is the live
  one, whose next forward repacks the already-transposed absmax), and with double quant it re-quantizes
  the rounded absmax with a new offset (close, not exact). The nibble reordering itself is a pure
  permutation and inverts exactly. So :class:`Linear4bit` keeps the quantization statistics as they were
  before the repack (a few percent of the weight's bytes), undoes only the permutation when it saves,
  and never changes the live layer while saving.
* **Loading.** ``Linear4bit`` has no loader for its ``weight.absmax`` / ``weight.quant_state.*`` keys, and
  ``Linear8bitLt`` refuses its ``SCB`` key unless the layer was quantized first; with ``assign=True``
  both would also turn the weight into a plain Parameter. Both classes here rebuild the quantized
  parameter straight from the saved tensors, on whatever device those tensors are on.

The saved keys are bitsandbytes' own (``weight``, ``weight.absmax``, ``weight.quant_map``,
``weight.quant_state.bitsandbytes__nf4``, ...; ``weight``, ``SCB``, ``weight_format`` for int8).
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn


class _DropMessages(logging.Filter):
    """Drops bitsandbytes log lines that are expected here and would otherwise print on every call."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


# Installed before bitsandbytes is imported, because the first message is logged at import time.
# - "kernels-community": an optional faster CPU 4-bit kernel fetched from the Hugging Face Hub; the
#   built-in AVX512-BF16 kernel is used without it (see docs/bitsandbytes.md).
# - "cast from ... to float16": LLM.int8() quantizes activations from float16 by design; logged per call.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropMessages("kernels-community"))
logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropMessages("to float16 during quantization"))

import bitsandbytes as bnb
from bitsandbytes.functional import QuantState

try:  # bitsandbytes versions without the CPU repacking (before 0.49) never need its inverse
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
except ImportError:  # pragma: no cover - depends on the installed version
    _convert_weight_packed_for_cpu_inverse = None

#: bitsandbytes' CPU repacking interleaves output rows in groups of this many (and asserts they divide out_features).
CPU_PACK_BLOCK_N = 32


def _is_assigning(local_metadata: dict[str, Any]) -> bool:
    return bool(local_metadata.get("assign_to_params_buffers", False))


def _take(tensor: torch.Tensor, current: torch.Tensor, assign: bool) -> torch.Tensor:
    """The saved tensor as the layer should hold it: as is when assigning, else a copy on the layer's device."""
    if assign or current.device.type == "meta":
        return tensor.detach()
    return tensor.detach().to(current.device, copy=True)


def _load_rest(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, handled: set[str], local_metadata: dict[str, Any],
    strict: bool, missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
) -> None:
    """Load the keys of ``module`` not in ``handled`` (the bias) the plain nn.Module way; the caller has
    loaded the weight itself, so nn.Module must not report it missing."""
    rest = {key: value for key, value in state_dict.items() if key.startswith(prefix) and key not in handled}
    nn.Module._load_from_state_dict(module, rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
    if prefix + "weight" in missing_keys:
        missing_keys.remove(prefix + "weight")


class Linear4bit(bnb.nn.Linear4bit):
    """bitsandbytes 4-bit Linear (NF4/FP4, blockwise absmax, optional double quant) with an exact,
    non-mutating state dict and a loader for it. Build one with :meth:`from_weight` or as an empty
    shell (any device, meta included) that ``load_state_dict`` fills."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        quant_type: str = "nf4",
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.float32,
        blocksize: int = 64,
        device: torch.device | str | None = None,
    ) -> None:
        # built on meta, then given empty tensors of the saved shapes: no full-precision weight is allocated
        super().__init__(
            in_features, out_features, bias=bias, compute_dtype=compute_dtype,
            compress_statistics=double_quant, quant_type=quant_type, device="meta",
        )
        self.weight = bnb.nn.Params4bit(
            torch.empty((in_features * out_features + 1) // 2, 1, dtype=torch.uint8, device=device),
            requires_grad=False, blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type,
            module=self, bnb_quantized=True,  # holds 4-bit data (once loaded): never quantize it again
        )
        if bias:
            # bitsandbytes casts the bias to the compute dtype at the first call; doing it now keeps the
            # state dict the same before and after inference
            self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device), requires_grad=False)
        # bitsandbytes' CPU repacking (for its AVX512-BF16 kernel) computes in bfloat16 whatever the compute
        # dtype, asserts out_features % 32 == 0 and reshapes absmax per row: take it only where it fits
        self.support_avx512bf16_for_cpu = (
            getattr(self, "support_avx512bf16_for_cpu", False)
            and compute_dtype == torch.bfloat16
            and out_features % CPU_PACK_BLOCK_N == 0
            and in_features % blocksize == 0
        )
        # (QuantState, its tensors as saved) captured before bitsandbytes repacks the layer for the CPU
        self._saved_statistics: tuple[QuantState, dict[str, torch.Tensor]] | None = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **options: Any) -> Linear4bit:
        """Quantize ``weight`` (out_features, in_features) on its own device."""
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias is not None, device="meta", **options)
        data, state = bnb.functional.quantize_4bit(
            weight.detach().contiguous(), blocksize=layer.weight.blocksize,
            compress_statistics=layer.weight.compress_statistics, quant_type=layer.weight.quant_type,
        )
        layer._set_quantized(data, state)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().to(layer.compute_dtype).clone(), requires_grad=False)
        return layer

    # ------------------------------------------------------------------ quantized state
    def _set_quantized(self, data: torch.Tensor, state: QuantState) -> None:
        self.weight = bnb.nn.Params4bit(
            data, requires_grad=False, quant_state=state, blocksize=state.blocksize,
            compress_statistics=state.nested, quant_type=state.quant_type, quant_storage=data.dtype,
            module=self, bnb_quantized=True,
        )
        self.quant_state = state
        self._keep_statistics(state)

    def _packed_for_cpu(self) -> bool:
        return bool(getattr(self.weight.quant_state, "packing_format_for_cpu", False))

    def plain_state(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The packed 4-bit weight and its statistics in bitsandbytes' portable layout, exactly as quantized,
        whether or not a forward pass has repacked the live layer. Changes nothing."""
        state = self.weight.quant_state
        if not self._packed_for_cpu():
            return self.weight.data, state.as_dict(packed=True)
        if self._saved_statistics is None:
            raise RuntimeError("this 4-bit layer was repacked for the CPU without its statistics being kept")
        view = copy.copy(state)  # the inverse writes into the state it gets
        view.original_nested = False  # skip its lossy re-quantization of absmax: the kept statistics are exact
        data, _ = _convert_weight_packed_for_cpu_inverse(self.weight.data, view)
        return data, self._saved_statistics[1]

    def unpack_for_cpu(self) -> None:
        """Undo bitsandbytes' CPU repacking exactly (before a move to another device, for instance).
        The next CPU inference call repacks."""
        if not self._packed_for_cpu():
            return
        data, statistics = self.plain_state()
        self._set_quantized(data, QuantState.from_dict(dict(statistics), device=data.device))

    # ------------------------------------------------------------------ torch hooks
    @torch.compiler.disable
    def _keep_statistics(self, state: QuantState) -> None:
        """Remember ``state``'s tensors as saved, before a CPU forward pass repacks them in place.
        References, not copies: the repacking replaces the tensors rather than writing into them."""
        self._saved_statistics = (state, state.as_dict(packed=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = getattr(self.weight, "quant_state", None)
        kept = self._saved_statistics
        # a state set behind this class's back (bitsandbytes' own .to() quantizing an empty shell)
        if state is not None and (kept is None or kept[0] is not state) and not self._packed_for_cpu():
            self._keep_statistics(state)
        return super().forward(x)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        if getattr(self.weight, "quant_state", None) is None:  # an empty shell: nothing quantized yet
            nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
            return
        data, statistics = self.plain_state()
        destination[prefix + "weight"] = data.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()
        for key, value in statistics.items():
            destination[prefix + "weight." + key] = value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        weight_key = prefix + "weight"
        statistics = {
            key[len(weight_key) + 1:]: value for key, value in state_dict.items() if key.startswith(weight_key + ".")
        }
        if weight_key not in state_dict or not statistics:  # not a 4-bit checkpoint: let nn.Module say what is wrong
            nn.Module._load_from_state_dict(
                self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            return
        assign = _is_assigning(local_metadata)
        data = _take(state_dict[weight_key], self.weight, assign)
        statistics = {key: _take(value, self.weight, assign) for key, value in statistics.items()}
        try:
            state = QuantState.from_dict(dict(statistics), device=data.device)
        except (ValueError, KeyError, AssertionError) as error:
            error_msgs.append(f"4-bit statistics of {weight_key} cannot be read: {error}")
            return
        if tuple(state.shape) != (self.out_features, self.in_features):
            error_msgs.append(
                f"size mismatch for {weight_key}: the checkpoint holds a 4-bit {tuple(state.shape)} weight, "
                f"this layer is ({self.out_features}, {self.in_features})"
            )
            return
        self._set_quantized(data, state)
        handled = {weight_key, *(weight_key + "." + key for key in statistics)}
        _load_rest(self, state_dict, prefix, handled, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _apply(self, fn, recurse: bool = True):
        # moves and casts must see bitsandbytes' portable layout: its own .cuda() would undo the CPU
        # repacking lossily, and .to() not at all
        self.unpack_for_cpu()
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{self.weight.quant_type}, blocksize={self.weight.blocksize}, double_quant={self.weight.compress_statistics}, "
            f"compute_dtype={str(self.compute_dtype).removeprefix('torch.')}"
        )


class Linear8bitLt(bnb.nn.Linear8bitLt):
    """bitsandbytes LLM.int8() Linear (int8 weights per output row; activation columns above
    ``threshold`` computed in float16) that loads its own state dict into an empty shell."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, threshold: float = 6.0,
        bias_dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    ) -> None:
        # built on meta, then given empty tensors of the saved shapes: no full-precision weight is allocated
        super().__init__(in_features, out_features, bias=bias, has_fp16_weights=False, threshold=threshold, device="meta")
        self.weight = bnb.nn.Int8Params(
            torch.empty(out_features, in_features, dtype=torch.int8, device=device), requires_grad=False,
            has_fp16_weights=False,
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device), requires_grad=False)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **options: Any) -> Linear8bitLt:
        """Quantize ``weight`` (out_features, in_features) on its own device."""
        out_features, in_features = weight.shape
        if bias is not None:
            options.setdefault("bias_dtype", bias.dtype)
        layer = cls(in_features, out_features, bias is not None, device="meta", **options)
        # bitsandbytes quantizes weights from float16 (Int8Params._quantize does the same)
        rows, row_scales, _ = bnb.functional.int8_vectorwise_quant(weight.detach().to(torch.float16).contiguous())
        layer._set_quantized(rows, row_scales)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return layer

    def _set_quantized(self, rows: torch.Tensor, row_scales: torch.Tensor) -> None:
        self.weight = bnb.nn.Int8Params(rows, requires_grad=False, has_fp16_weights=False, CB=rows, SCB=row_scales)
        self.state.reset_grads()  # drops the CB/SCB copies a previous forward moved into the matmul state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        weight_key, scale_key = prefix + "weight", prefix + "SCB"
        if scale_key not in state_dict or weight_key not in state_dict:  # not an int8 checkpoint
            nn.Module._load_from_state_dict(
                self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            return
        rows, scales = state_dict[weight_key], state_dict[scale_key]
        if rows.dtype != torch.int8 or tuple(rows.shape) != (self.out_features, self.in_features):
            error_msgs.append(
                f"{weight_key}: expected int8 ({self.out_features}, {self.in_features}), "
                f"found {rows.dtype} {tuple(rows.shape)}"
            )
            return
        assign = _is_assigning(local_metadata)
        self._set_quantized(_take(rows, self.weight, assign), _take(scales, self.weight, assign))
        # "weight_format" says the rows are in row-major order, the only layout bitsandbytes still writes
        handled = {weight_key, scale_key, prefix + "weight_format"}
        _load_rest(self, state_dict, prefix, handled, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"int8, threshold={self.state.threshold:g}"
        )
