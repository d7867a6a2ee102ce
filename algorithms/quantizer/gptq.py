"""gptq: GPTQ (Frantar et al., 2022) in plain torch: 2/3/4/8-bit weights calibrated on real text.

Each linear layer of each transformer block is quantized with the GPTQ solver (smashlib.gptq) on the
Hessian of its inputs, block after block, so every block corrects for the error of the ones before.
Weights are stored packed (two 4-bit values per byte, 3-bit as 8 values in 3 bytes) with bf16 group
scales and packed integer zero points (smashlib.layers.packed_int), and run weight-only on PyTorch's
int4 CPU kernel with bf16 activations, or its int8 weight-only kernel for 8 bits
(smashlib.layers.lowbit_kernels; docs/gptq.md has the measurements behind that choice).

``compute_dtype="bfloat16"`` casts what is not quantized (norms, embeddings kept in float, attention,
biases) to bf16 too. The kernels take bf16 activations anyway, so this costs no measurable quality
(bf16 and fp32 SmolLM2 give the same perplexity) and makes the rest of the model run at bf16 speed:
with 8-bit weights, whose prefill products already run as bf16 GEMMs on CPUs with bf16 units, prefill runs at the speed
of a bf16 model and decode reads int8 weights (measured in docs/cpu_recipe.md).

8-bit layers decode (calls of up to 8 tokens) on smashlib's kernel (AVX512-VNNI, or AVX2) where a
C++ compiler can build it once (smashlib.layers.int8_vnni_kernel): the same product as PyTorch's
weight-only kernel to a relative 2e-5, at twice its speed. 2-4-bit layers decode on its 4-bit sibling (the
same int16 activation blocks), which reads half the bytes and on AVX2 CPUs is 1.9x PyTorch's int4 kernel.
``decode_kernel="weight_only"`` keeps PyTorch's kernels; ``"int8_only"`` smashlib's for 8 bits only.

auto-gptq is not used: it cannot quantize without CUDA and breaks on transformers 5. The maintained
GPTQModel package can do the solving instead (``gptq_backend="gptqmodel"``) where it is installed.
"""
from __future__ import annotations

from typing import Any

import torch
from ConfigSpace import Categorical, Float, Integer
from torch import nn

from smashlib.algorithm import Algorithm
from smashlib.casting import DTYPES, cast_model, prepare_cast_model
from smashlib.errors import SmashConfigError, UnsupportedModelError
from smashlib.gptq.block_grids import BLOCK_GRIDS
from smashlib.gptq.layerwise import (
    NOT_TEXT,
    Grid,
    LayerGrids,
    SolverOptions,
    block_layer_names,
    find_layout,
    output_head_name,
    prepare_structure,
    quantize_model,
    supported_families,
)
from smashlib.gptq.sensitive_layers import sensitive_layer_names
from smashlib.gptq.speech_calibration import check_speech_components, speech_calibration_batches
from smashlib.layers.lowbit_kernels import DECODE_AUTO, DECODE_INT8_ONLY, DECODE_KERNELS, DECODE_WEIGHT_ONLY
from smashlib.layers.packed_int import PackedLinear
from smashlib.targets import target_modules_hyperparameter

#: The precision of the output head (when ``target_modules`` includes it) and of the sensitive block layers
#: (smashlib.gptq.sensitive_layers): that of the other layers, or 8 bits with one scale per row.
LAYER_PRECISIONS = ("weight_bits", "int8")
#: Schema-1 ``output_head`` -> (target_modules, output_head_precision).
OLD_OUTPUT_HEAD = {
    "weight_bits": ("all_linear", "weight_bits"),
    "int8": ("all_linear", "int8"),
    "keep": ("all_but_output_head", "weight_bits"),
}


def grid_kind(settings: dict[str, Any]) -> str:
    return settings.get("grid", "minmax")  # older saved configs have no gptq_grid


def layer_grid(settings: dict[str, Any]) -> Grid:
    """The grid of the block layers. Act-order is a GPTQ ordering: round-to-nearest has no column order,
    so its layers store no permutation (and run without the gather it would cost). llama.cpp's block
    grids keep the columns in order too: a GGUF block is 32 consecutive input columns."""
    kind = grid_kind(settings)
    act_order = bool(settings["desc_act"]) and settings["method"] == "gptq" and kind == "minmax"
    return Grid(int(settings["weight_bits"]), int(settings["group_size"]), act_order, kind)


def eight_bit_grid(settings: dict[str, Any]) -> Grid:
    """The grid of a layer kept at 8 bits in a lower-bit recipe: one scale per row (the int8 kernel), or
    on a GGUF grid Q8_0 (blocks of 32), which llama.cpp reads."""
    return Grid(8, -1, False) if grid_kind(settings) == "minmax" else Grid(8, 32, False, "q8_0")


def head_grid(settings: dict[str, Any], head_targeted: bool = True) -> Grid | None:
    """The head's grid, or None when ``target_modules`` leaves it out (``head_targeted`` False)."""
    if not head_targeted:
        return None
    return eight_bit_grid(settings) if settings["output_head_precision"] == "int8" else layer_grid(settings)


def block_grids(model: nn.Module, settings: dict[str, Any]) -> LayerGrids:
    """The grid of every block layer: layer_grid's, except the sensitive layers at 8 bits when
    ``sensitive_layers_precision="int8"`` (older saved configs have no such setting)."""
    grid = layer_grid(settings)
    if settings.get("sensitive_layers_precision", "weight_bits") != "int8" or grid.bits == 8:
        return grid
    upgraded, names = eight_bit_grid(settings), sensitive_layer_names(model, find_layout(model))
    return lambda name: upgraded if name in names else grid


def set_decode_kernel(model: nn.Module, settings: dict[str, Any]) -> nn.Module:
    """Tell every packed layer which kernel its 8-bit decode calls run, and build its kernel form now."""
    choice = settings.get("decode_kernel", DECODE_AUTO)
    for module in model.modules():
        if isinstance(module, PackedLinear):
            module.decode_kernel = choice
            module.prepare_kernel()
    return model


class GPTQ(Algorithm):
    name = "gptq"
    group = "quantizer"
    runs_on = ("cpu",)
    requires = ("tokenizer", "data")
    summary = "GPTQ 2/3/4/8-bit weights calibrated layer by layer on data; packed on disk, int4/int8 CPU kernels."
    hyperparameters = (
        Categorical("weight_bits", [4, 8, 3, 2], default=4),
        Categorical("group_size", [32, 64, 128, 256, -1], default=32),
        Float("damp_percent", (0.001, 0.2), default=0.01, log=True),
        Categorical("desc_act", [True, False], default=True),
        Integer("calibration_samples", (8, 1024), default=32, log=True),
        Categorical("sequence_length", [256, 128, 512, 1024, 2048], default=256),
        target_modules_hyperparameter("all_linear"),
        Categorical("output_head_precision", list(LAYER_PRECISIONS), default="weight_bits"),
        Categorical("sensitive_layers_precision", list(LAYER_PRECISIONS), default="weight_bits"),
        Categorical("backend", ["torch", "gptqmodel"], default="torch"),
        Categorical("method", ["gptq", "rtn"], default="gptq"),
        Categorical("grid", ["minmax", *BLOCK_GRIDS], default="minmax"),
        Categorical("compute_dtype", ["float32", "bfloat16"], default="float32"),
        Categorical("decode_kernel", list(DECODE_KERNELS), default=DECODE_AUTO),
    )

    @classmethod
    def upgrade_settings(cls, settings, schema_version):
        settings = dict(settings)
        if schema_version < 2 and "output_head" in settings:
            settings["target_modules"], settings["output_head_precision"] = OLD_OUTPUT_HEAD[settings.pop("output_head")]
        if schema_version < 3:  # saved before the VNNI kernel: keep computing exactly what it computed then
            settings.setdefault("decode_kernel", DECODE_WEIGHT_ONLY)
        if schema_version < 4 and settings.get("decode_kernel") == DECODE_AUTO:  # before the 4-bit kernel: likewise
            settings["decode_kernel"] = DECODE_INT8_ONLY
        return settings

    def target_names(self, model: nn.Module, settings: dict[str, Any]) -> list[str]:
        """The selected linear layers of the transformer blocks, and the output head when selected (other
        layers outside the blocks are never quantized: gptq calibrates block by block)."""
        layout = find_layout(model)
        if layout is None:
            return []
        selected = set(super().target_names(model, settings))
        names = [name for block in block_layer_names(model, layout, selected) for name in block]
        head = output_head_name(model) if layout.head else None
        return names + ([head] if head is not None and head in selected else [])

    def _plan(self, model: nn.Module, settings: dict[str, Any]) -> tuple[set[str], Grid | None]:
        targets = set(self.target_names(model, settings))
        return targets, head_grid(settings, output_head_name(model) in targets)

    def required_components(self, settings):
        """Round-to-nearest (``method="rtn"``) uses no calibration data: it is the baseline that shows
        what GPTQ's calibration buys, on the very same grid, storage and kernels."""
        return () if settings["method"] == "rtn" else self.requires

    def check_settings(self, settings, device):
        kind = grid_kind(settings)
        if kind in BLOCK_GRIDS:
            bits, block = BLOCK_GRIDS[kind]
            if (int(settings["weight_bits"]), int(settings["group_size"])) != (bits, block):
                raise SmashConfigError(
                    f"gptq_grid={kind!r} is llama.cpp's {kind.upper()} grid: {bits}-bit values in blocks of {block}; "
                    f"set gptq_weight_bits={bits} and gptq_group_size={block} (got {settings['weight_bits']} and "
                    f"{settings['group_size']})."
                )
            if settings["backend"] != "torch":
                raise SmashConfigError(f"gptq_grid={kind!r} is solved by smashlib's own code: it needs gptq_backend='torch'.")
        if settings.get("sensitive_layers_precision") == "int8" and settings["backend"] == "gptqmodel":
            raise SmashConfigError(
                "gptq_sensitive_layers_precision='int8' (mixed precision) is solved by smashlib's own code: it "
                "needs gptq_backend='torch'."
            )
        if settings["method"] == "rtn" and settings["backend"] == "gptqmodel":
            raise SmashConfigError(
                "gptq_method='rtn' rounds to nearest in smashlib's own code: it needs gptq_backend='torch'."
            )
        if settings["backend"] == "gptqmodel":
            from smashlib.gptq.gptqmodel_backend import check_available

            check_available(settings)

    def check_model(self, model: nn.Module) -> None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type in NOT_TEXT:
            raise UnsupportedModelError(
                f"gptq calibrates on text, and {type(model).__name__} reads {NOT_TEXT[model_type]}: use a quantizer "
                "without calibration (hqq, torch_dynamic, half) for it."
            )
        if find_layout(model) is None:
            raise UnsupportedModelError(
                f"gptq calibrates text models block by block and knows these layouts: "
                f"{supported_families()}. {type(model).__name__} has none of them; for other models use a "
                "quantizer without calibration (hqq, torch_dynamic)."
            )

    def prepare_run(self, model, settings, components):
        layout = find_layout(model)
        if settings["backend"] == "gptqmodel" and not layout.causal_lm:
            raise UnsupportedModelError(
                f"gptq_backend='gptqmodel' quantizes decoder language models; {type(model).__name__} is one of "
                f"the {layout.family}: use gptq_backend='torch' (the default)."
            )
        if layout.inputs == "speech" and settings["method"] == "gptq":
            check_speech_components(components)

    def apply(self, model, settings, components):
        options = SolverOptions(settings["method"], float(settings["damp_percent"]))
        targets, head = self._plan(model, settings)
        if options.method == "rtn":
            model = quantize_model(model, [], block_grids(model, settings), head, options, targets=targets)
            return set_decode_kernel(self._cast(model, settings), settings)
        from smashlib.data import calibration_batches
        from smashlib.data.activation_calibration import GPTQ_TOKENS_PER_BATCH

        length, samples = int(settings["sequence_length"]), int(settings["calibration_samples"])
        if find_layout(model).inputs == "speech":  # 30 s windows: 1500 encoder positions each
            batches = speech_calibration_batches(model, components, samples, max(1, GPTQ_TOKENS_PER_BATCH // 1500))
        else:
            batches = calibration_batches(components, samples, length, batch_size=max(1, GPTQ_TOKENS_PER_BATCH // length))
        if settings["backend"] == "gptqmodel":
            from smashlib.gptq.gptqmodel_backend import quantize_with_gptqmodel

            model = quantize_with_gptqmodel(model, batches, layer_grid(settings), head, settings, components)
        else:
            model = quantize_model(model, batches, block_grids(model, settings), head, options, targets=targets)
        return set_decode_kernel(self._cast(model, settings), settings)  # kernels built for the final dtype

    @staticmethod
    def _compute_dtype(settings: dict[str, Any]) -> torch.dtype | None:
        """The dtype the rest of the model runs in, or None to leave it as it is (float32, and configs saved
        before the setting)."""
        return DTYPES.get(settings.get("compute_dtype", "float32"))

    def _cast(self, model: nn.Module, settings: dict[str, Any]) -> nn.Module:
        """The model in its compute dtype (after quantizing, so calibration saw the original precision)."""
        dtype = self._compute_dtype(settings)
        return model if dtype is None else cast_model(model, dtype)

    def prepare_for_loading(self, model, settings):
        targets, head = self._plan(model, settings)
        model = prepare_structure(model, block_grids(model, settings), head, targets)
        dtype = self._compute_dtype(settings)
        return model if dtype is None else model.to(dtype)

    def after_loading(self, model, settings):
        set_decode_kernel(model, settings)
        dtype = self._compute_dtype(settings)
        if dtype is not None:
            prepare_cast_model(model, dtype)
        return model
