"""``gptq_backend="gptqmodel"``: let the GPTQModel package solve, then keep smashlib's packed layers.

GPTQModel (the maintained successor of auto-gptq) quantizes a model from a folder and writes a GPTQ
checkpoint. Its weights are read back into :class:`PackedLinear`, so saving, loading and the CPU
kernels are the same as with the torch backend. GPTQModel needs a newer torch than this project pins
and pins numpy, so it is normally absent: choosing this backend then fails in ``check_settings``,
before the model is touched.

The checkpoint layout read here is the GPTQ ("v1") format GPTQModel saves by default, per layer:
``qweight`` int32 [in * bits / 32, out] (values packed along the input dimension, lowest bits
first), ``qzeros`` int32 [groups, out * bits / 32] holding zero - 1, ``scales`` fp16 [groups, out],
``g_idx`` int32 [in] (the group of each input column; not sorted with act-order). Scales become bf16
(the kernels' type): a relative change below 2**-9 of each scale.
"""
from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smashlib.errors import HyperparameterValueError, MissingPackageError
from smashlib.gptq.layerwise import (
    Grid,
    block_layer_names,
    find_layout,
    output_head_name,
    tie_embedding,
    tied_input_embedding,
)
from smashlib.layers.packed_int import PackedLinear
from smashlib.modules import replace_module

#: Widths whose GPTQ checkpoint packing is a whole number of values per int32.
CHECKPOINT_BITS = (2, 4, 8)


def check_available(settings: Mapping[str, Any]) -> None:
    """MissingPackageError unless GPTQModel is importable; HyperparameterValueError for what it cannot do."""
    if importlib.util.find_spec("gptqmodel") is None:
        raise MissingPackageError(
            "gptq_backend='gptqmodel' needs the GPTQModel package (pip install gptqmodel), which needs a newer torch "
            "than this installation and pins numpy. The default gptq_backend='torch' runs the same algorithm "
            "without it."
        )
    if int(settings["weight_bits"]) not in CHECKPOINT_BITS:
        raise HyperparameterValueError(
            f"gptq_backend='gptqmodel' handles gptq_weight_bits in {CHECKPOINT_BITS}, not {settings['weight_bits']}: "
            "use gptq_backend='torch' for 3 bits."
        )
    if settings["output_head_precision"] == "int8":
        raise HyperparameterValueError(
            "gptq_backend='gptqmodel' quantizes the output head with the other layers or not at all: set "
            "gptq_output_head_precision='weight_bits' (or use gptq_backend='torch' for an int8 head)."
        )
    if settings["target_modules"] not in ("all_linear", "all_but_output_head"):
        raise HyperparameterValueError(
            "gptq_backend='gptqmodel' quantizes every layer of every block: set gptq_target_modules to "
            "'all_linear' or 'all_but_output_head' (or use gptq_backend='torch' to choose layers)."
        )


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Values packed 32 // bits per int32 along ``dim`` (lowest bits first), as int64."""
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    if dim == 0:
        values = (words.unsqueeze(1) >> shifts[None, :, None]) & ((1 << bits) - 1)
        return values.reshape(packed.shape[0] * per_word, packed.shape[1])
    values = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0], packed.shape[1] * per_word)


def packed_from_checkpoint(tensors: Mapping[str, torch.Tensor], prefix: str, grid: Grid) -> PackedLinear:
    """A PackedLinear from one layer of a GPTQ (v1) checkpoint (see the module docstring)."""
    bits = grid.bits
    q = unpack_int32(tensors[f"{prefix}.qweight"], bits, dim=0).t()  # [out, in]
    scales = tensors[f"{prefix}.scales"].float().t()  # [out, groups]
    out_features, in_features = q.shape[0], tensors[f"{prefix}.g_idx"].numel()
    q = q[:, :in_features]
    zeros = (unpack_int32(tensors[f"{prefix}.qzeros"], bits, dim=1)[:, :out_features].t() + 1) & ((1 << bits) - 1)
    g_idx = tensors[f"{prefix}.g_idx"].long()
    perm = torch.argsort(g_idx, stable=True)  # stored column j then lies in group j // group_size
    if not grid.act_order and not bool((perm == torch.arange(in_features)).all()):
        raise ValueError(f"{prefix}: the checkpoint's columns are reordered (act-order) but desc_act is off")
    bias = tensors.get(f"{prefix}.bias")
    return PackedLinear.from_integers(
        q[:, perm].to(torch.uint8), scales, zeros.to(torch.uint8), bits, grid.group_size,
        perm if grid.act_order else None, bias.float() if bias is not None else None,
    )


def quantize_with_gptqmodel(
    model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], grid: Grid, head_grid: Grid | None,
    settings: Mapping[str, Any], components: Any,
) -> nn.Module:
    """Quantize ``model`` with GPTQModel on ``batches`` and swap in PackedLinear layers read from its checkpoint."""
    from gptqmodel import GPTQModel, QuantizeConfig
    from safetensors.torch import load_file

    examples = [
        {"input_ids": row.tolist(), "attention_mask": mask.tolist()}
        for batch in batches for row, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]
    config = QuantizeConfig(
        bits=grid.bits, group_size=grid.group_size, desc_act=grid.act_order,
        damp_percent=float(settings["damp_percent"]), lm_head=head_grid is not None,
    )
    with tempfile.TemporaryDirectory(prefix="smashlib-gptqmodel-") as work:
        source, target = Path(work) / "source", Path(work) / "quantized"
        model.save_pretrained(source)
        if components.tokenizer is not None:
            components.tokenizer.save_pretrained(source)
        quantized = GPTQModel.load(str(source), config)
        quantized.quantize(examples)
        quantized.save(str(target))
        tensors: dict[str, torch.Tensor] = {}
        for path in sorted(target.glob("*.safetensors")):
            tensors.update(load_file(str(path)))
    names = [name for block in block_layer_names(model, find_layout(model)) for name in block]
    head_name = output_head_name(model) if head_grid is not None else None
    embedding_name = tied_input_embedding(model, head_name) if head_name is not None else None
    for name in names + ([head_name] if head_name else []):
        layer = packed_from_checkpoint(tensors, name, grid if name != head_name else head_grid)
        layer.prepare_kernel()
        replace_module(model, name, layer)
    if embedding_name is not None:
        tie_embedding(model, embedding_name, model.get_submodule(head_name))
    return model
