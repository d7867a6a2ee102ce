"""Save tensor-subclass weights (torchao's Int8Tensor, Float8Tensor, ...) as the plain tensors inside them.

safetensors stores plain tensors only, and torchao keeps a quantized weight as a tensor subclass whose
real data are inner tensors (``qdata``, ``scale``, ...). These hooks make a module's ``state_dict()``
hold those inner tensors under ``<prefix><param>.<inner>`` instead of the subclass, and make
``load_state_dict()`` put them back together, so the ordinary save/load path (state dict -> safetensors
-> ``load_state_dict(assign=True, strict=True)``) keeps the weights quantized without any special case.

Loading needs no metadata file: the non-tensor attributes (block size, dtype, activation-quantization
settings) are taken from the weight already in the module, which ``prepare_for_loading`` creates by
quantizing the (meta-device) skeleton with the same settings. Only its inner tensors are replaced.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

_MARK = "_smashlib_flat_subclass_state"


def _flatten(tensor: torch.Tensor, key: str, out: dict[str, torch.Tensor]) -> None:
    if not is_traceable_wrapper_subclass(tensor):
        out[key] = tensor
        return
    names, _ = tensor.__tensor_flatten__()
    for name in names:
        _flatten(getattr(tensor, name), f"{key}.{name}", out)


def _unflatten(template: torch.Tensor, key: str, state: dict[str, Any]) -> torch.Tensor | None:
    """Rebuild ``template``'s subclass from the tensors under ``key.*`` in ``state`` (popped), or None when
    they are not all there (the caller then leaves loading to report what is missing)."""
    if not is_traceable_wrapper_subclass(template):
        return state.pop(key, None)
    names, context = template.__tensor_flatten__()
    if not all(any(k == f"{key}.{n}" or k.startswith(f"{key}.{n}.") for k in state) for n in names):
        return None
    inner = {}
    for name in names:
        rebuilt = _unflatten(getattr(template, name), f"{key}.{name}", state)
        if rebuilt is None:
            return None
        inner[name] = rebuilt
    return type(template).__tensor_unflatten__(inner, context, template.size(), template.stride())


def _state_dict_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for name, param in module._parameters.items():
        if param is not None and is_traceable_wrapper_subclass(param) and prefix + name in state_dict:
            del state_dict[prefix + name]
            flat: dict[str, torch.Tensor] = {}
            _flatten(param.detach(), prefix + name, flat)
            state_dict.update(flat)


def _load_pre_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, *args: Any) -> None:
    for name, param in list(module._parameters.items()):
        if param is None or not is_traceable_wrapper_subclass(param) or prefix + name in state_dict:
            continue
        rebuilt = _unflatten(param.detach(), prefix + name, state_dict)
        if rebuilt is not None:
            # set directly, so that loading without assign=True does not copy into a meta template
            setattr(module, name, nn.Parameter(rebuilt, requires_grad=False))
            state_dict[prefix + name] = module._parameters[name]


def keep_state_flat(module: nn.Module) -> None:
    """Install the hooks on ``module`` (once): its subclass parameters save and load as plain tensors."""
    if getattr(module, _MARK, False):
        return
    module.register_state_dict_post_hook(_state_dict_hook)
    module.register_load_state_dict_pre_hook(_load_pre_hook)
    setattr(module, _MARK, True)
