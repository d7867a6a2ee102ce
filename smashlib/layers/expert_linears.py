"""Mixture-of-experts weights as one nn.Linear per expert, so that every layer-wise algorithm reaches them.

transformers 5 stores the experts of a MoE block (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek, GPT-OSS...) as two
3-D parameters, ``gate_up_proj`` (experts x 2*intermediate x hidden) and ``down_proj``, in a module made by
``transformers.integrations.moe.use_experts_implementation``. Quantizers, pruners and LoRA work on linear
layers, so on such a model they would touch attention only: on Mixtral 8x7B, 3% of the weights, silently.

:func:`split_experts` gives each expert of each such module its own ``nn.Linear`` layers, in
``nn.ModuleList`` s under the same names (``...experts.gate_up_proj.3``, ``...experts.down_proj.3``), as
transformers 4 (and AutoGPTQ, GPTQModel, llm-compressor) laid experts out, and runs the module with a
forward that computes what transformers' eager one does, expert by expert. The linears' weights are views of
the 3-D tensors (no copy; transposed layouts are copied once to nn.Linear's), so splitting is exact and :meth:`SplitExperts.restore` puts the model back as it
was. The decorator's flags (``has_gate``, ``has_bias``, ``is_transposed``, ``has_post_expert_norm``, and the
module's own ``_apply_gate``, e.g. GPT-OSS's clamped SwiGLU on interleaved columns) are the contract every
transformers experts implementation is written against; this forward is written against it too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

#: Marks a module whose experts were split (kept on the class made for it).
SPLIT_MARK = "_smashlib_split_experts"
_SPLIT_CLASSES: dict[type, type] = {}


def _first_projection(module: nn.Module) -> str:
    return "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj"


def is_fused_experts(module: nn.Module) -> bool:
    """An experts module of transformers' experts interface still holding its 3-D weights."""
    if getattr(type(module), SPLIT_MARK, False) or getattr(module, "_is_expert_parallel", False):
        return False
    if not all(hasattr(module, flag) for flag in ("has_gate", "has_bias", "is_transposed", "num_experts")):
        return False
    weights = [module._parameters.get(_first_projection(module)), module._parameters.get("down_proj")]
    return all(isinstance(w, torch.Tensor) and w.dim() == 3 and w.shape[0] == module.num_experts for w in weights)


def fused_experts_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if is_fused_experts(module)]


def has_split_experts(model: nn.Module) -> bool:
    return any(getattr(type(module), SPLIT_MARK, False) for module in model.modules())


def _linears(weights: torch.Tensor, biases: torch.Tensor | None) -> nn.ModuleList:
    """One nn.Linear per expert whose weight (and bias) are views of the 3-D [experts, out, in] tensors."""
    layers = []
    for index in range(weights.shape[0]):
        layer = nn.Linear(weights.shape[2], weights.shape[1], bias=biases is not None, device="meta")
        layer.weight = nn.Parameter(weights[index], requires_grad=weights.requires_grad)
        if biases is not None:
            layer.bias = nn.Parameter(biases[index], requires_grad=biases.requires_grad)
        layers.append(layer)
    return nn.ModuleList(layers)


def _stacked_transposed(layers: nn.ModuleList) -> nn.Parameter:
    """The [experts, in, out] weight a transposed experts module held, rebuilt from its linears (exact)."""
    weight = layers[0].weight
    stacked = torch.stack([layer.weight.detach() for layer in layers]).transpose(1, 2).contiguous()
    return nn.Parameter(stacked, requires_grad=weight.requires_grad)


def split_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor | None = None,
    top_k_weights: torch.Tensor | None = None,
    **aliases: torch.Tensor,
) -> torch.Tensor:
    """transformers' eager experts forward, each expert's products done by its own linear layers."""
    top_k_index = aliases.get("router_indices") if top_k_index is None else top_k_index  # GPT-OSS's names
    top_k_weights = aliases.get("routing_weights") if top_k_weights is None else top_k_weights
    first, down = getattr(self, _first_projection(self)), self.down_proj
    output = torch.zeros_like(hidden_states)
    with torch.no_grad():
        mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)  # experts x k x tokens
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
    for expert in hit:
        position, token = torch.where(mask[expert])
        states = first[expert](hidden_states[token])
        states = self._apply_gate(states) if self.has_gate else self.act_fn(states)
        states = down[expert](states)
        if getattr(self, "has_post_expert_norm", False):
            states = self.post_expert_norm(states)
        states = states * top_k_weights[token, position, None]
        output.index_add_(0, token, states.to(output.dtype))
    return output


def _split_class(cls: type) -> type:
    if cls not in _SPLIT_CLASSES:
        _SPLIT_CLASSES[cls] = type(
            cls.__name__, (cls,), {"forward": split_forward, SPLIT_MARK: True, "__module__": cls.__module__,
                                   "__doc__": f"{cls.__name__} with one nn.Linear per expert (smashlib.layers.expert_linears)."}
        )
    return _SPLIT_CLASSES[cls]


@dataclass
class SplitExperts:
    """What :func:`split_experts` changed, to undo it (smash() does when a check fails afterwards): each
    module, its class and its parameters in their order; None for a transposed weight, rebuilt from its
    linears, so that the split does not hold two copies of it."""

    originals: list[tuple[nn.Module, type, dict[str, nn.Parameter | None]]] = field(default_factory=list)

    def restore(self) -> None:
        for module, cls, parameters in reversed(self.originals):
            rebuilt = {name: _stacked_transposed(module._modules[name]) for name, kept in parameters.items() if kept is None}
            for name in parameters:
                module._modules.pop(name, None)
            module._parameters = {name: rebuilt.get(name, kept) for name, kept in parameters.items()}  # order kept
            module.__class__ = cls
        self.originals.clear()


def split_experts(model: nn.Module) -> SplitExperts:
    """Give every fused experts module of ``model`` one nn.Linear per expert (in place, exact).

    The linears' weights are views of the 3-D weight, except in a transposed layout ([experts, in, out],
    GPT-OSS): that weight is copied once to [experts, out, in], so each expert's weight is a row-major
    matrix like any nn.Linear's; a quantizer's result then does not depend on the layout it was read
    from (a quantized transposed view, saved contiguous, reloaded 1e-7 away from itself)."""
    done = SplitExperts()
    for name in fused_experts_names(model):
        module = model.get_submodule(name)
        first, transposed, cls = _first_projection(module), bool(module.is_transposed), type(module)
        kept = dict(module._parameters)
        for projection in (first, "down_proj"):
            weights = module._parameters.pop(projection)
            biases = module._parameters.pop(f"{projection}_bias", None) if module.has_bias else None
            if transposed:
                kept[projection] = None
                weights = weights.detach().transpose(1, 2).contiguous().requires_grad_(weights.requires_grad)
            layers = _linears(weights, biases)
            module.add_module(projection, layers.train(module.training))  # bitsandbytes' int8 differs in training
        module.__class__ = _split_class(cls)
        done.originals.append((module, cls, kept))
    return done
