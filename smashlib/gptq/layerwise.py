"""GPTQ over a whole model, one transformer block at a time, as in the paper's reference code.

1. Run the calibration batches until the first block and keep its inputs (hidden states plus the
   keyword arguments the model passes it: masks, positions, rotary embeddings).
2. For each block: run it on those inputs with forward hooks that accumulate H = 2 X X^T for each
   linear layer (once per distinct input tensor: q/k/v read the same one), quantize the layers with
   the GPTQ solver, swap them for :class:`PackedLinear`, and run the block again, now quantized, to
   produce the next block's inputs. Each block thus corrects for the error of the blocks before it.
3. Optionally the output head, on the final norm's outputs; a tied input embedding then reads the
   head's packed table (:class:`PackedEmbedding`).

Only one block's activations are alive at a time besides the block inputs, so memory stays at about
two copies of (samples x tokens x hidden) floats.
"""
from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from smashlib.data.calibration import with_decoder_inputs
from smashlib.gptq.solver import HessianAccumulator, QuantizedWeight, gptq_quantize, one_thread, rtn_quantize
from smashlib.layers.linear_like import is_linear_like, linear_sizes, linear_weight
from smashlib.layers.packed_int import PackedEmbedding, PackedLinear
from smashlib.layers.tied_embedding import tie_spec
from smashlib.modules import output_head_names, replace_module
from smashlib.progress import progress
from smashlib.time_limit import check_time_limit


# ====================================================================== model layouts
@dataclass(frozen=True)
class Layout:
    """Where a family keeps its blocks, and the modules between the last block and the head.

    ``stacks`` are the block lists in the order the forward pass runs them: one for decoders and encoders,
    the encoder's then the decoder's for encoder-decoder models, whose decoder blocks are calibrated on the
    outputs of the already quantized encoder (their cross-attention reads them). ``seq2seq`` models get
    decoder inputs in calibration: the text itself, shifted right as for training. ``head`` says whether
    the output head may be quantized: T5 and BART tie it to one embedding both stacks read (Whisper only to
    its decoder's, which then reads the packed head's table, as Llama's embedding does)."""

    family: str
    stacks: tuple[str, ...]
    tail: tuple[str, ...]
    seq2seq: bool = False
    head: bool = True
    #: what calibration feeds it: "text" (token batches) or "speech" (smashlib.gptq.speech_calibration)
    inputs: str = "text"
    #: the model types it is restricted to, where its module paths are shared with other families
    model_types: tuple[str, ...] = ()

    @property
    def causal_lm(self) -> bool:
        """A decoder-only language model: what GPTQModel quantizes."""
        return len(self.stacks) == 1 and self.head


LAYOUTS: tuple[Layout, ...] = (
    # the first layout whose every stack a model has is its layout: encoder-decoders come first, as BART's
    # decoder sits where OPT's does. The tail lists every module that may sit between the last block and the
    # head; those a model lacks are skipped (Phi calls its final norm final_layernorm, the others norm)
    Layout(
        "T5-like encoder-decoders (T5, mT5, Flan-T5: encoder.block, decoder.block)", ("encoder.block", "decoder.block"),
        ("decoder.final_layer_norm",), seq2seq=True, head=False,
    ),
    Layout(
        "Whisper (model.model.encoder.layers, model.model.decoder.layers; calibrated on speech)",
        ("model.encoder.layers", "model.decoder.layers"), ("model.decoder.layer_norm",), seq2seq=True,
        inputs="speech", model_types=("whisper",),  # its head is tied to the decoder's embedding alone
    ),
    Layout(
        "BART-like encoder-decoders (BART, mBART, Marian, Pegasus: model.model.encoder.layers, model.model.decoder.layers)",
        ("model.encoder.layers", "model.decoder.layers"), ("model.decoder.layer_norm",), seq2seq=True, head=False,
    ),
    Layout(
        "Llama-like (Llama, Mistral, Qwen2/3, Gemma, Phi, SmolLM2...: model.model.layers)", ("model.layers",),
        ("model.norm", "model.final_layernorm"),
    ),
    Layout("OPT (model.model.decoder.layers)", ("model.decoder.layers",), ("model.decoder.final_layer_norm", "model.decoder.project_out")),
    Layout("GPT-2-like (GPT-2, GPT-J, Falcon, BLOOM: model.transformer.h)", ("transformer.h",), ("transformer.ln_f",)),
    Layout("GPT-NeoX (Pythia: model.gpt_neox.layers)", ("gpt_neox.layers",), ("gpt_neox.final_layer_norm",)),
    # transformers 5's vision-language models keep their language model here: only its blocks are quantized,
    # calibrated on text alone, as GPTQModel and llm-compressor do; the vision tower stays as it is
    Layout(
        "vision-language (Llava, Qwen2-VL, Gemma 3, Mistral 3...: model.model.language_model.layers)",
        ("model.language_model.layers",), ("model.language_model.norm",),
    ),
    Layout("BERT (bert.encoder.layer)", ("bert.encoder.layer",), (), head=False),
    Layout("RoBERTa, XLM-RoBERTa (roberta.encoder.layer)", ("roberta.encoder.layer",), (), head=False),
)
#: Models whose blocks match a layout but whose inputs are neither text nor Whisper's speech: calibrated on
#: text they would fail in the first forward pass. model_type -> what they read.
NOT_TEXT = {"speech_to_text": "speech", "vision-encoder-decoder": "images", "nougat": "images"}


def _lookup(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def supported_families() -> str:
    return "; ".join(layout.family for layout in LAYOUTS)


def _blocks_of(model: nn.Module, path: str) -> nn.ModuleList | None:
    blocks = _lookup(model, path)
    if isinstance(blocks, nn.ModuleList) and len(blocks) and any(is_linear_like(m) for m in blocks[0].modules()):
        return blocks
    return None


def find_layout(model: nn.Module) -> Layout | None:
    """The layout ``model`` follows, or None (also for models whose inputs are not text, :data:`NOT_TEXT`)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in NOT_TEXT:
        return None
    for layout in LAYOUTS:
        if layout.model_types and model_type not in layout.model_types:
            continue
        if all(_blocks_of(model, path) is not None for path in layout.stacks):
            return layout
    return None


def stack_blocks(model: nn.Module, layout: Layout) -> list[tuple[str, nn.ModuleList]]:
    """(path, blocks) of each stack, in forward order."""
    return [(path, _lookup(model, path)) for path in layout.stacks]


# ====================================================================== what gets quantized
@dataclass(frozen=True)
class Grid:
    """How one layer is quantized: bits per weight, group size (-1: one group per row), act-order, and
    the grid's kind: "minmax", or a llama.cpp block grid ("q8_0", "q4_0", "q4_1") for GGUF export."""

    bits: int
    group_size: int
    act_order: bool
    kind: str = "minmax"


#: One grid for every block layer, or the grid of each layer by its full name (mixed precision).
LayerGrids = Grid | Callable[[str], Grid]


def grid_of(grids: LayerGrids, name: str) -> Grid:
    return grids if isinstance(grids, Grid) else grids(name)


def block_layer_names(model: nn.Module, layout: Layout, targets: Container[str] | None = None) -> list[list[str]]:
    """For each block of every stack, in forward order, the full names of its linear-like layers (only
    those in ``targets`` when given)."""
    return [names for stack in stack_layer_names(model, layout, targets) for names in stack]


def stack_layer_names(model: nn.Module, layout: Layout, targets: Container[str] | None = None) -> list[list[list[str]]]:
    """:func:`block_layer_names` per stack (llama.cpp's sensitive-layer rule counts blocks within one stack)."""
    named = [
        [
            [f"{path}.{index}.{name}" for name, module in block.named_modules() if is_linear_like(module)]
            for index, block in enumerate(blocks)
        ]
        for path, blocks in stack_blocks(model, layout)
    ]
    if targets is None:
        return named
    return [[[name for name in names if name in targets] for names in stack] for stack in named]


def tied_input_embedding(model: nn.Module, head_name: str) -> str | None:
    """The name of the input embedding that shares the head's weight, if it does."""
    get_input = getattr(model, "get_input_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    head = model.get_submodule(head_name)
    weight, head_weight = getattr(embedding, "weight", None), getattr(head, "weight", None)
    if weight is None or head_weight is None:
        return None
    same = weight is head_weight or (
        not weight.is_meta and weight.data_ptr() == head_weight.data_ptr() and weight.shape == head_weight.shape
    )
    if not same:
        return None
    return next(name for name, module in model.named_modules() if module is embedding)


def output_head_name(model: nn.Module) -> str | None:
    names = [name for name in output_head_names(model) if is_linear_like(model.get_submodule(name))]
    return names[0] if len(names) == 1 else None


def empty_packed_like(module: nn.Module, grid: Grid) -> PackedLinear:
    """A PackedLinear with ``module``'s shapes and no data (for loading)."""
    in_features, out_features, has_bias = linear_sizes(module)
    device = module.weight.device
    bias_dtype = module.bias.dtype if has_bias else torch.float32
    return PackedLinear(in_features, out_features, grid.bits, grid.group_size, has_bias, grid.act_order, bias_dtype, device=device)


def packed_from(module: nn.Module, quantized: QuantizedWeight, grid: Grid) -> PackedLinear:
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    perm = quantized.perm
    if grid.act_order and perm is None:  # rounded to nearest (never ran on the data): same buffers as the rest
        perm = torch.arange(quantized.q.shape[1], device=quantized.q.device)
    layer = PackedLinear.from_integers(quantized.q, quantized.scales, quantized.zeros, grid.bits, grid.group_size, perm, bias)
    layer.prepare_kernel()
    return layer


def tie_embedding(model: nn.Module, embedding_name: str, head: PackedLinear) -> None:
    """Make the input embedding read the packed head's rows, keeping what it did around its weight (Gemma 3's
    scale); an embedding that does something a tied embedding cannot reproduce keeps its own weight."""
    spec = tie_spec(model.get_submodule(embedding_name))
    if spec is not None:
        replace_module(model, embedding_name, PackedEmbedding(head, spec.padding_idx, spec.dtype, spec.scale))


def prepare_structure(
    model: nn.Module, grid: LayerGrids, head_grid: Grid | None, targets: Container[str] | None = None
) -> nn.Module:
    """Swap every layer that :func:`quantize_model` would quantize for an empty PackedLinear."""
    layout = find_layout(model)
    for names in block_layer_names(model, layout, targets):
        for name in names:
            replace_module(model, name, empty_packed_like(model.get_submodule(name), grid_of(grid, name)))
    head_name = output_head_name(model) if head_grid is not None else None
    if head_name is not None:
        embedding_name = tied_input_embedding(model, head_name)
        head = empty_packed_like(model.get_submodule(head_name), head_grid)
        replace_module(model, head_name, head)
        if embedding_name is not None:
            tie_embedding(model, embedding_name, head)
    return model


# ====================================================================== calibration
class _Captured(Exception):
    """Raised by the hook on the first block to stop the forward pass once its inputs are kept."""


@dataclass
class BlockCall:
    """One batch's input to a block: the hidden states (the first block's; the others' are computed as the
    blocks before them are quantized) and everything else the model passed that block."""

    hidden: torch.Tensor | None
    args: tuple
    kwargs: dict[str, Any]


def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, batches: Iterable[dict], seq2seq: bool = False
) -> list[list[BlockCall]]:
    """For each block of one stack, per batch, what the model passes it: ``[block][batch]``.

    Every block's own arguments are kept, not the first block's for all: they differ by block in some
    families (Gemma 2/3 and GPT-OSS alternate sliding-window and full-attention masks, Gemma 3 also the
    rotary base; T5's later blocks get the position bias its first block computes). The forward pass stops
    at the stack's last block. A first pass on one row tells which blocks return a plain tensor
    (transformers 5's decoder layers): the batches' passes skip those, as the model can hand the next
    block nothing they computed but hidden states, which are recomputed anyway. The capture then costs one
    row's forward pass instead of every batch's (16 s of SmolLM2-135M's 32 x 256 calibration tokens, 0.6 s
    now). Blocks that return tuples (T5's position bias, BART) run in every pass."""
    calls: list[list[BlockCall]] = [[] for _ in blocks]
    returns_tensor = [False] * len(blocks)
    last = len(blocks) - 1

    def capturing(index: int, block: nn.Module):
        run = block.forward

        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            calls[index].append(BlockCall(hidden if index == 0 else None, tuple(args[1:]), dict(kwargs)))
            if index == last:
                raise _Captured
            if returns_tensor[index]:
                return hidden
            out = run(hidden, *args[1:], **kwargs)
            returns_tensor[index] = isinstance(out, torch.Tensor)
            return out

        return forward

    device = next(model.parameters()).device

    def run_model(batch: dict, rows: slice = slice(None)) -> None:
        inputs = {k: v[rows].to(device) for k, v in batch.items()}
        try:
            model(**(with_decoder_inputs(model, inputs) if seq2seq else inputs), use_cache=False)
        except _Captured:
            pass

    batches = list(batches)
    own_forwards = [block.__dict__.get("forward") for block in blocks]  # accelerate's hooks set one
    for index, block in enumerate(blocks):
        block.forward = capturing(index, block)
    try:
        if batches:  # one row first: it tells which blocks return plain tensors, at a batch row's cost
            run_model(batches[0], slice(0, 1))
            for kept in calls:
                kept.clear()
        for count, batch in enumerate(batches, start=1):
            run_model(batch)
            missing = [index for index, kept in enumerate(calls) if len(kept) != count]
            if missing:
                raise RuntimeError(
                    f"gptq: the model's forward pass did not call block(s) {missing} of {len(blocks)} once per batch; "
                    "gptq calibrates models whose blocks each run once, in order."
                )
    finally:
        for block, own in zip(blocks, own_forwards):
            del block.forward
            if own is not None:
                block.forward = own
    return calls


def run_block(block: nn.Module, call: BlockCall, hidden: torch.Tensor) -> torch.Tensor:
    out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class InputHessians:
    """Hessians of a block's linear layers, one per distinct input tensor: layers fed the same tensor
    (q/k/v, gate/up) share it and are later solved together."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.owner_of: dict[str, str] = {}
        self.hessians: dict[str, HessianAccumulator] = {}
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}
        self._handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in layers.items()]

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            seen = self._seen.get(id(x))
            if seen is None or seen[0] is not x:
                self.hessians.setdefault(name, HessianAccumulator(x.shape[-1], x.device)).add(x.detach())
                self._seen[id(x)] = (x, name)  # keeping x alive keeps its id unique within the batch
                owner = name
            else:
                owner = seen[1]
            self.owner_of.setdefault(name, owner)

        return hook

    def end_batch(self) -> None:
        self._seen.clear()

    def groups(self) -> dict[str, list[str]]:
        """owner name -> the layers that read its input, in the order they first ran."""
        grouped: dict[str, list[str]] = {}
        for name, owner in self.owner_of.items():
            grouped.setdefault(owner, []).append(name)
        return grouped

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._seen.clear()


@dataclass
class SolverOptions:
    method: str = "gptq"  # or "rtn": round-to-nearest on the same grid, no calibration
    damp_percent: float = 0.01


def solve_group(modules: Sequence[nn.Module], hessian: torch.Tensor | None, grid: Grid, options: SolverOptions) -> list[PackedLinear]:
    """Quantize layers that read the same input as one stacked matrix; one PackedLinear each."""
    weights = [linear_weight(m).float() for m in modules]
    stacked = torch.cat(weights) if len(weights) > 1 else weights[0]
    with one_thread():
        if options.method == "rtn" or hessian is None:
            quantized = rtn_quantize(stacked, grid.bits, grid.group_size, grid.kind)
        else:
            quantized = gptq_quantize(
                stacked, hessian, grid.bits, grid.group_size, options.damp_percent, grid.act_order, grid_kind=grid.kind
            )
        packed, start = [], 0
        for module, weight in zip(modules, weights):
            packed.append(packed_from(module, quantized.rows(start, start + weight.shape[0]), grid))
            start += weight.shape[0]
    return packed


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    grid: LayerGrids,
    head_grid: Grid | None = None,
    options: SolverOptions | None = None,
    verbose: bool = True,
    targets: Container[str] | None = None,
) -> nn.Module:
    """GPTQ (or RTN) for every linear layer in ``model``'s blocks (those in ``targets``, full names, when
    given), stack after stack, and its output head when ``head_grid``."""
    options = options or SolverOptions()
    layout = find_layout(model)
    hidden: list[torch.Tensor] = []
    for path, blocks in stack_blocks(model, layout):
        hidden = _quantize_stack(model, layout, path, blocks, batches, grid, options, verbose, targets)
    head_name = output_head_name(model) if head_grid is not None else None
    if head_name is not None:
        _quantize_head(model, layout, head_name, hidden, head_grid, options)
    return model


def _quantize_stack(
    model: nn.Module,
    layout: Layout,
    path: str,
    blocks: nn.ModuleList,
    batches: Sequence[dict[str, torch.Tensor]],
    grid: LayerGrids,
    options: SolverOptions,
    verbose: bool,
    targets: Container[str] | None,
) -> list[torch.Tensor]:
    """Quantize one stack's blocks in order; returns its last block's outputs (empty without data)."""
    use_data = options.method == "gptq"
    calls = capture_block_inputs(model, blocks, batches, layout.seq2seq) if use_data else []
    hidden = [call.hidden for call in calls[0]] if use_data else []
    # a progress bar only where calibration takes a while (tiny test models have a couple of blocks)
    for index, block in enumerate(progress(blocks, desc="gptq blocks", disable=not verbose or len(blocks) < 8)):
        layers = {
            name: module for name, module in block.named_modules()
            if is_linear_like(module) and (targets is None or f"{path}.{index}.{name}" in targets)
        }
        if use_data:
            hessians = InputHessians(layers)
            try:
                for call, states in zip(calls[index], hidden):
                    check_time_limit(f"gptq calibration of block {index}")  # hundreds of samples per block
                    run_block(block, call, states)
                    hessians.end_batch()
            finally:
                hessians.remove()
            groups = hessians.groups()
            unseen = [name for name in layers if name not in hessians.owner_of]
            groups.update({name: [name] for name in unseen})  # never run on this data: round to nearest
        else:
            groups = {name: [name] for name in layers}
        for owner, names in groups.items():
            hessian = hessians.hessians[owner].hessian if use_data and owner in hessians.hessians else None
            by_grid: dict[Grid, list[str]] = {}  # layers reading one input but on different grids: one solve each
            for name in names:
                by_grid.setdefault(grid_of(grid, f"{path}.{index}.{name}"), []).append(name)
            for layer_grid, same in by_grid.items():
                for name, packed in zip(same, solve_group([layers[n] for n in same], hessian, layer_grid, options)):
                    replace_module(block, name, packed)
        if use_data:
            hidden = [run_block(block, call, states) for call, states in zip(calls[index], hidden)]
    return hidden


def _quantize_head(model, layout: Layout, head_name: str, hidden, head_grid: Grid, options: SolverOptions) -> None:
    head = model.get_submodule(head_name)
    embedding_name = tied_input_embedding(model, head_name)
    hessian = None
    if hidden:
        tail = [m for m in (_lookup(model, path) for path in layout.tail) if isinstance(m, nn.Module)]
        accumulator = HessianAccumulator(linear_sizes(head)[0])
        for states in hidden:
            for module in tail:
                states = module(states)
            accumulator.add(states)
        hessian = accumulator.hessian
    (packed,) = solve_group([head], hessian, head_grid, options)
    replace_module(model, head_name, packed)
    if embedding_name is not None:
        tie_embedding(model, embedding_name, packed)
