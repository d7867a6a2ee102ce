"""SmoothQuant (Xiao et al., 2022): move activation outliers into the weights before int8 quantization.

An int8 activation shares one scale across its channels (per tensor in fbgemm's dynamic kernel), and a
few outlier channels, 10-100x larger than the rest, stretch that scale until every other channel is
left with a handful of levels. For a Linear ``y = x W^T`` any positive per-input-channel ``s`` gives the
same ``y`` from ``x / s`` and ``W * s``; SmoothQuant picks ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``
from calibration activations, sharing the channel's range between activation and weight (alpha 0.5:
evenly; higher alpha moves more of it into the weights).

The division ``x / s`` costs nothing at run time when it is folded into what produced ``x``: the weight
(and bias) of a norm feeding the Linear directly (q/k/v after ``input_layernorm``), or the output rows
of an earlier Linear whose output reaches it through channel-wise operations only (``up_proj`` ->
``down_proj`` through the gated product, ``v_proj`` -> ``o_proj`` through attention's weighted sum,
grouped-query attention included). The weights hold the smoothing afterwards, so a smoothed model
saves and loads as a plain one.

Folds are found by module names (:data:`RULES`, Llama-, OPT/Whisper/BART- and T5-style blocks). A name
match is not a proof (a norm whose output also feeds the residual, Gemma's ``1 + weight`` norm, a
non-homogeneous activation), so each rule's folds are checked on a calibration batch: smoothing is exact
arithmetic, the model's outputs must not move, and a rule whose folds move them is undone with a
warning. No rule can silently damage a model it does not fit.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from smashlib.targets import is_nn_linear
from smashlib.time_limit import check_time_limit

#: Relative change of the model's outputs (max |after - before| / max |before|) above which a fold is
#: judged invalid. Smoothing only reorders rounding: measured ~1e-6 in float32; an invalid fold moves
#: outputs by 1e-1 and more. Half precision rounds the rescaled weights, hence its wider bound.
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_TOLERANCE = 5e-2
#: Floor of the smoothing factors, so a channel the calibration never excited is not blown up.
MIN_SCALE = 1e-5


@dataclass(frozen=True)
class Rule:
    """In any module that has all these submodules (relative dotted paths): ``source``'s output channels
    are divided by s and the input channels of ``targets`` (Linears reading exactly that output) are
    multiplied by s."""

    source: str
    targets: tuple[str, ...]


RULES: tuple[Rule, ...] = (
    # Llama, Mistral, Qwen2/3, SmolLM and the rest of the Llama family (pre-norm decoder blocks)
    Rule("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    Rule("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    Rule("input_layernorm", ("self_attn.qkv_proj",)),  # Phi-3: fused projections
    Rule("post_attention_layernorm", ("mlp.gate_up_proj",)),
    Rule("up_proj", ("down_proj",)),  # down_proj reads act(gate) * up: linear in up's channels
    Rule("v_proj", ("o_proj",)),  # attention mixes tokens, never channels
    # OPT, BART, Whisper (pre-norm when their layer norms come first; the output check tells)
    Rule("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    Rule("encoder_attn_layer_norm", ("encoder_attn.q_proj",)),
    Rule("final_layer_norm", ("fc1",)),
    Rule("v_proj", ("out_proj",)),
    # T5 (T5LayerSelfAttention / T5LayerCrossAttention / T5LayerFF hold the norm and the sublayer)
    Rule("layer_norm", ("SelfAttention.q", "SelfAttention.k", "SelfAttention.v")),
    Rule("layer_norm", ("EncDecAttention.q",)),
    Rule("layer_norm", ("DenseReluDense.wi",)),
    Rule("layer_norm", ("DenseReluDense.wi_0", "DenseReluDense.wi_1")),
    Rule("v", ("o",)),
    Rule("wi_1", ("wo",)),  # gated T5: wo reads act(wi_0) * wi_1
    Rule("wi", ("wo",)),  # T5 v1.0: ReLU is positively homogeneous; the output check rejects GELU
)


@dataclass
class Fold:
    """One place where a rule applies: the source module and the Linears it feeds."""

    rule: Rule
    source_name: str
    source: nn.Module
    target_names: list[str]
    targets: list[nn.Linear]
    #: For each input channel of the targets, the source output channel it comes from (grouped-query
    #: attention feeds one v_proj channel to several o_proj channels).
    channel_of_input: torch.Tensor
    scales: torch.Tensor | None = field(default=None, repr=False)


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _joined(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def _is_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        "norm" in type(module).__name__.lower()
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
        and weight.is_floating_point()
    )


def _output_channels(source: nn.Module) -> int | None:
    if is_nn_linear(source):
        return source.out_features
    if _is_norm(source):
        return source.weight.numel()
    return None


def _channel_map(block: nn.Module, width: int, in_features: int) -> torch.Tensor | None:
    """Source channel of each target input channel: the identity, or grouped-query attention's
    repetition of each key/value head over ``in_features // width`` query heads."""
    if width == in_features:
        return torch.arange(in_features)
    head_dim = getattr(block, "head_dim", None)
    if not isinstance(head_dim, int) or in_features % width or width % head_dim:
        return None
    groups = in_features // width
    channel = torch.arange(in_features)
    head, within = channel // head_dim, channel % head_dim
    return (head // groups) * head_dim + within  # transformers' repeat_kv: query head h reads kv head h // groups


def find_folds(model: nn.Module, only: Iterable[str] | None = None) -> list[Fold]:
    """Every place a rule of :data:`RULES` applies, in module order. With ``only``, keep the folds
    whose target Linears are all in it (smoothing a Linear that stays in full precision helps nothing)."""
    keep = set(only) if only is not None else None
    folds: list[Fold] = []
    claimed: set[int] = set()
    for prefix, block in model.named_modules():
        for rule in RULES:
            source = _submodule(block, rule.source)
            targets = [_submodule(block, path) for path in rule.targets]
            if source is None or any(type(t) is not nn.Linear for t in targets):
                continue
            names = [_joined(prefix, path) for path in rule.targets]
            if keep is not None and not all(name in keep for name in names):
                continue
            if any(id(t) in claimed for t in targets) or len({t.in_features for t in targets}) != 1:
                continue
            width = _output_channels(source)
            channel_map = _channel_map(block, width, targets[0].in_features) if width else None
            if channel_map is None:
                continue
            claimed.update(id(t) for t in targets)
            folds.append(Fold(rule, _joined(prefix, rule.source), source, names, targets, channel_map))
    return folds


def _first_tensor(output: Any) -> torch.Tensor:
    """The model's main output (logits, last hidden state) to compare before and after smoothing."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    values = output.values() if isinstance(output, Mapping) else output
    return next(v for v in values if isinstance(v, torch.Tensor))


def _run(model: nn.Module, batch: Any) -> Any:
    if not isinstance(batch, Mapping):
        return model(batch)
    config = getattr(model, "config", None)
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    # text calibration data holds input_ids only; the decoder reads the same text, shifted right
    if (getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" not in batch and callable(prepare)
            and ("labels" in batch or "input_ids" in batch)):
        batch = {**batch, "decoder_input_ids": prepare(labels=batch.get("labels", batch.get("input_ids")))}
    return model(**batch)


def _first_sample(batch: Any) -> Any:
    """The batch cut to its first sample: checking a fold needs one forward pass, not a batch's worth."""
    if isinstance(batch, torch.Tensor):
        return batch[:1]
    if not isinstance(batch, Mapping):
        return batch
    sizes = [v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    if not sizes:
        return batch
    return {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == sizes[0] else v for k, v in batch.items()}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


@torch.no_grad()
def activation_ranges(model: nn.Module, linears: Iterable[nn.Linear], batches: Iterable[Any]) -> dict[int, torch.Tensor]:
    """max |x_j| per input channel of each Linear over the batches (keyed by id of the Linear)."""
    ranges: dict[int, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, module.in_features).abs().amax(dim=0).float()
        previous = ranges.get(id(module))
        ranges[id(module)] = x if previous is None else torch.maximum(previous, x)

    handles = [linear.register_forward_pre_hook(record) for linear in linears]
    device = next(model.parameters()).device
    try:
        for batch in batches:
            check_time_limit("SmoothQuant's activation ranges")
            _run(model, _to_device(batch, device))
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def smoothing_scales(fold: Fold, activation_range: torch.Tensor, alpha: float) -> torch.Tensor:
    """s per source channel: max|X|^alpha / max|W|^(1-alpha), each max taken over every target input
    channel that the source channel feeds."""
    width = _output_channels(fold.source)
    index = fold.channel_of_input.to(activation_range.device)
    weight_range = torch.stack([t.weight.detach().abs().amax(dim=0).float() for t in fold.targets]).amax(dim=0)
    act = torch.zeros(width, device=index.device).scatter_reduce(0, index, activation_range, "amax")
    wgt = torch.zeros(width, device=index.device).scatter_reduce(0, index, weight_range.to(index.device), "amax")
    scales = act.pow(alpha) / wgt.pow(1 - alpha)
    usable = (act > 0) & (wgt > 0) & torch.isfinite(scales)
    return torch.where(usable, scales.clamp(min=MIN_SCALE), torch.ones_like(scales))


@torch.no_grad()
def _scale_fold(fold: Fold, scales: torch.Tensor) -> None:
    """Divide the source's output channels by ``scales`` and multiply the targets' input channels."""
    source = fold.source
    divide = (1.0 / scales).to(source.weight.device)
    if is_nn_linear(source):
        source.weight.mul_(divide[:, None].to(source.weight.dtype))
    else:
        source.weight.mul_(divide.to(source.weight.dtype))
    bias = getattr(source, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.mul_(divide.to(bias.dtype))
    per_input = scales[fold.channel_of_input.to(scales.device)]
    for target in fold.targets:
        target.weight.mul_(per_input[None, :].to(target.weight.device, target.weight.dtype))


def _tensors_of(fold: Fold) -> list[torch.Tensor]:
    tensors = [fold.source.weight, *(t.weight for t in fold.targets)]
    bias = getattr(fold.source, "bias", None)
    return tensors + ([bias] if isinstance(bias, torch.Tensor) else [])


def _relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    before, after = before.float(), after.float()
    return float((after - before).abs().max() / before.abs().max().clamp(min=1e-12))


@torch.no_grad()
def smooth(
    model: nn.Module,
    calibration_batches: Iterable[Any],
    alpha: float = 0.5,
    only: Iterable[str] | None = None,
) -> list[Fold]:
    """Smooth ``model`` in place with SmoothQuant and return the folds applied.

    ``calibration_batches``: inputs as the model takes them (dicts of tensors such as
    :func:`smashlib.data.calibration_batches` returns, or tensors of input ids); the first sample of
    the first one also checks that each rule keeps the outputs unchanged. ``alpha`` in [0, 1]: the share of each
    channel's range moved into the weights. ``only``: names of the Linears that will be quantized
    (smoothing the others would change nothing useful). Call it before quantizing.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be between 0 and 1, not {alpha}.")
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("SmoothQuant needs at least one calibration batch.")
    folds = find_folds(model, only)
    if not folds:
        return []
    was_training = model.training
    model.eval()
    try:
        ranges = activation_ranges(model, [t for fold in folds for t in fold.targets], batches)
        device = next(model.parameters()).device
        probe = _to_device(_first_sample(batches[0]), device)
        reference = _first_tensor(_run(model, probe))
        tolerance = TOLERANCE.get(reference.dtype, HALF_TOLERANCE)
        applied: list[Fold] = []
        for rule in dict.fromkeys(fold.rule for fold in folds):  # one rule at a time, so a bad one is found
            group = [fold for fold in folds if fold.rule == rule and id(fold.targets[0]) in ranges]
            saved = [[tensor.clone() for tensor in _tensors_of(fold)] for fold in group]
            for fold in group:
                activation = torch.stack([ranges[id(t)] for t in fold.targets]).amax(dim=0)
                fold.scales = smoothing_scales(fold, activation, alpha)
                _scale_fold(fold, fold.scales)
            change = _relative_change(reference, _first_tensor(_run(model, probe)))
            if change <= tolerance:
                applied.extend(group)
                continue
            for fold, copies in zip(group, saved):
                for tensor, copy in zip(_tensors_of(fold), copies):
                    tensor.copy_(copy)
            warnings.warn(
                f"SmoothQuant: folding {rule.source} -> {', '.join(rule.targets)} changed the outputs of "
                f"{type(model).__name__} by {change:.2g} (relative), so that rule does not fit this model; "
                "those layers were left unsmoothed.",
                stacklevel=2,
            )
    finally:
        model.train(was_training)
    return applied
