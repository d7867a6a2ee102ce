"""``format="compressed-tensors"``: a folder plain transformers loads (and vLLM, SGLang, TGI serve).

compressed-tensors (the format of vLLM's llm-compressor) stores a quantized Linear as

    pack-quantized  weight_packed int32 (values packed 32 to num_bits words), weight_scale [out, groups],
                    weight_zero_point int32 (packed along the rows; asymmetric grids only), weight_shape
    int-quantized   weight int8, weight_scale [out, groups]                (8-bit symmetric)

with ``w = scale * (q - zero_point)`` and q signed (int4: -8..7). smashlib's packed layers hold the same
thing with unsigned integers, so a GPTQ layer maps to it exactly: ``q - 2**(bits-1)`` and
``zero - 2**(bits-1)``. The tensors are written by the package's own compressors (fed our dense
weight and our scales and zero points, they re-derive our very integers: ``w / scale`` is exact), and
``quantization_config`` by its own pydantic models and ``ModelCompressor.update_config``.

MoE experts (split by smashlib.layers.expert_linears) are written per expert under the names of the
model's own checkpoints (smashlib.export.checkpoint_names), which transformers merges while loading.

Not representable, and refused: act-order with groups (compressed-tensors removed its ``g_idx``
"group" activation ordering; a GPTQ result with ``gptq_desc_act=True`` and ``gptq_group_size=-1``, or
with ``gptq_desc_act=False``, is fine), and any algorithm other than gptq.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smashlib.errors import UnsupportedExportError
from smashlib.export.checkpoint_names import checkpoint_rows, float_expert_tensors
from smashlib.export.checks import STRUCTURAL, refuse_algorithms, unwrap
from smashlib.layers.packed_int import PackedEmbedding, PackedLinear

FORMAT = "compressed-tensors"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class LayerScheme:
    """The compressed-tensors scheme one packed layer needs."""

    bits: int
    group_size: int  # -1: one scale per output channel
    symmetric: bool
    # MoE experts: transformers 5 merges them into fused weights while loading, which it does for packed
    # (weight_packed) experts only, so their 8-bit values are packed too (vLLM reads both)
    expert: bool = False

    @property
    def compression_format(self) -> str:
        return "int-quantized" if self.bits == 8 and self.symmetric and not self.expert else "pack-quantized"


def layer_scheme(name: str, layer: PackedLinear) -> LayerScheme:
    if layer.perm is not None and layer.group_size != -1:
        raise UnsupportedExportError(
            f"{name} is GPTQ with act-order and groups of {layer.group_size}: its groups are not runs of "
            f"consecutive input columns, which compressed-tensors (since it dropped g_idx) cannot store. "
            "Re-smash with gptq_desc_act=False, or gptq_group_size=-1."
        )
    _, zeros = layer.integers()
    middle = 1 << (layer.bits - 1)
    return LayerScheme(layer.bits, layer.group_size, bool((zeros == middle).all()))


def quantization_args(scheme: LayerScheme) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    grouped = scheme.group_size != -1
    return QuantizationArgs(
        num_bits=scheme.bits,
        type="int",
        symmetric=scheme.symmetric,
        strategy="group" if grouped else "channel",
        group_size=scheme.group_size if grouped else None,
    )


def quantization_config(schemes: dict[str, LayerScheme]) -> Any:
    """The package's QuantizationConfig for layer name -> scheme: one config group per distinct scheme,
    targeting its layers by exact name (regex), so nothing else in the model is touched."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStatus

    by_scheme: dict[LayerScheme, list[str]] = {}
    for name, scheme in schemes.items():
        by_scheme.setdefault(scheme, []).append(name)
    groups = {
        f"group_{index}": QuantizationScheme(
            targets=["re:^(" + "|".join(re.escape(name) for name in names) + ")$"],
            weights=quantization_args(scheme),
            format=scheme.compression_format,
        )
        for index, (scheme, names) in enumerate(by_scheme.items())
    }
    formats = {scheme.compression_format for scheme in by_scheme}
    return QuantizationConfig(
        config_groups=groups,
        format=formats.pop() if len(formats) == 1 else "mixed-precision",
        quantization_status=QuantizationStatus.COMPRESSED,
    )


def compressed_layer(
    layer: PackedLinear, scheme: LayerScheme, config_scheme: Any, rows: slice = slice(None)
) -> dict[str, torch.Tensor]:
    """The layer's tensors (its ``rows`` only, e.g. the gate half of an expert's gate_up_proj) as the
    package's compressor for its format writes them."""
    from compressed_tensors.compressors import BaseCompressor

    compressor = BaseCompressor.get_value_from_registry(scheme.compression_format)
    middle = 1 << (layer.bits - 1)
    _, zeros = layer.integers()
    # fp32 throughout: scale * (q - zero) and its division by scale are then exact
    state = {"weight": layer.dequantize(torch.float32)[rows], "weight_scale": layer.scales.float()[rows]}
    if not scheme.symmetric:
        state["weight_zero_point"] = (zeros.to(torch.int16) - middle).to(torch.int8)[rows]
    compressed = dict(compressor.compress(state, config_scheme))
    compressed["weight_scale"] = compressed["weight_scale"].to(layer.scales.dtype)  # bf16: exact
    if layer.bias is not None:
        compressed["bias"] = layer.bias.detach()[rows]
    return compressed


def dense_tensors(model: nn.Module, packed_names: set[str], skip: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Everything that is not a packed layer nor under a module named in ``skip`` (split MoE experts
    written fused instead), as the plain model names it; a packed (tied) embedding becomes its dense
    table, since the engine's embedding cannot read a quantized head's tensors."""
    prefixes = tuple(f"{name}." for name in skip)
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        if module_name in packed_names or (prefixes and module_name.startswith(prefixes)):
            continue
        if isinstance(module, PackedEmbedding):
            tensors[f"{module_name}.weight"] = module.head.dequantize(torch.float32).to(module.dtype)
            continue
        for key, tensor in module.named_parameters(recurse=False):
            tensors[f"{module_name}.{key}" if module_name else key] = tensor.detach()
        for key, tensor in module.named_buffers(recurse=False):
            if tensor is not None and key not in module._non_persistent_buffers_set:
                tensors[f"{module_name}.{key}" if module_name else key] = tensor.detach()
    return tensors


def _drop_shared(tensors: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """A tied, unquantized head shares the embedding's storage: keep one copy (transformers re-ties)."""
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    kept = {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tuple(tensor.shape))
        if tied and key in seen:
            continue
        seen[key] = name
        kept[name] = tensor.contiguous()
    return kept


def refuse_conv1d(model: nn.Module, packed: dict[str, PackedLinear]) -> None:
    """GPT-2-style Conv1D layers (weights stored [in, out]) are not linear layers to compressed-tensors:
    transformers would load their [out, in] quantized weights into Conv1D modules and fail on the shapes."""
    from transformers.pytorch_utils import Conv1D

    from smashlib.skeleton import build_skeleton

    config = getattr(model, "config", None)
    if config is None or not hasattr(type(model), "_from_config"):
        return
    skeleton = build_skeleton(type(model), config)
    original = dict(skeleton.named_modules())
    conv = [name for name in packed if isinstance(original.get(name), Conv1D)]
    if conv:
        raise UnsupportedExportError(
            f"{conv[0]} (and {len(conv) - 1} more) is a transformers Conv1D layer ({type(model).__name__}), which "
            f"compressed-tensors cannot hold: it quantizes nn.Linear layers. Save with format='smashlib' instead."
        )


def save_compressed_tensors(smashed: Any, path: str | os.PathLike) -> Path:
    """Write ``smashed`` (a gptq result) as a compressed-tensors folder; see the module docstring."""
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import save_file
    from transformers.core_model_loading import revert_weight_conversion

    from smashlib.atomic import atomic_folder

    model, algorithms = unwrap(smashed)
    refuse_algorithms(
        algorithms, ("gptq", *STRUCTURAL), FORMAT,
        "Re-smash with quantizer='gptq' (gptq_method='gptq' or 'rtn') to get int4/int8 weights it can store.",
    )
    packed = {name: module for name, module in model.named_modules() if isinstance(module, PackedLinear)}
    if not packed:
        raise UnsupportedExportError(
            f"format={FORMAT!r} stores quantized layers, and this model has none: smash it with quantizer='gptq' "
            "first (or save a plain model with transformers' save_pretrained)."
        )
    refuse_conv1d(model, packed)
    schemes = {name: layer_scheme(name, layer) for name, layer in packed.items()}
    # the checkpoint's linear layers: smashlib's split MoE experts go back to transformers' per-expert layout
    placed = checkpoint_rows(model, list(packed))
    pieces = {piece.name: (name, slice(piece.start, piece.stop)) for name, found in placed.items() for piece in found}
    experts = {piece.name for found in placed.values() for piece in found if piece.expert}
    checkpoint_schemes = {piece: replace(schemes[name], expert=piece in experts) for piece, (name, _) in pieces.items()}
    # the config targets modules: transformers matches them against the model's (GPT-NeoX's lm_head, stored
    # as embed_out), and its experts by the word "experts", where vLLM matches the checkpoint's names
    target_of = {piece: piece if piece in experts else name for piece, (name, _) in pieces.items()}
    if not all(scheme.symmetric for scheme in schemes.values()):
        warnings.warn(
            "format='compressed-tensors': this model has asymmetric (zero-point) grids, written as the package writes "
            "them; vLLM reads them, but transformers 5 with compressed-tensors 0.20 cannot load packed zero points yet "
            "(vllm-project/llm-compressor#1618). For transformers, smash with a symmetric grid: gptq_grid='q4_0' "
            "(int4, groups of 32) or gptq_weight_bits=8.",
            stacklevel=3,
        )
    config = quantization_config({target_of[piece]: scheme for piece, scheme in checkpoint_schemes.items()})
    scheme_of = {}
    for group in config.config_groups.values():
        pattern = re.compile(group.targets[0][len("re:"):])
        scheme_of.update({piece: group for piece in pieces if pattern.match(target_of[piece])})
    tensors = {}
    for piece, (name, rows) in pieces.items():
        for key, tensor in compressed_layer(packed[name], checkpoint_schemes[piece], scheme_of[piece], rows).items():
            tensors[f"{piece}.{key}"] = tensor.contiguous()
    model_config = getattr(model, "config", None)
    untie = any(isinstance(m, PackedEmbedding) for m in model.modules())
    tied = bool(getattr(model_config, "tie_word_embeddings", False)) and not untie
    # named as the checkpoint names them, like the quantized layers (transformers' save_pretrained does the same)
    # MoE experts left in float: fused, as the model names them. transformers 5's loader takes per-expert
    # float weights in a compressed-tensors checkpoint for packed ones and drops them ("Ckpt contains: 0")
    float_experts = float_expert_tensors(model, list(packed))
    dense = revert_weight_conversion(model, _drop_shared(dense_tensors(model, set(packed), float_experts), tied))
    dense.update(float_experts)
    tensors.update({key: tensor.contiguous() for key, tensor in dense.items()})

    components = getattr(getattr(smashed, "smash_config", None), "components", None)
    with atomic_folder(path) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        if model_config is not None:
            model_config.save_pretrained(staging)
            _edit_config(staging / "config.json", untie)
            ModelCompressor(quantization_config=config).update_config(str(staging))
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(staging)
        tokenizer = getattr(components, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(staging)
    return Path(path).absolute()


def _edit_config(config_file: Path, untie: bool) -> None:
    """Drop a quantization_config left from an earlier load; untie a head whose embedding is written dense."""
    data = json.loads(config_file.read_text())
    data.pop("quantization_config", None)
    if untie:
        data["tie_word_embeddings"] = False
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
