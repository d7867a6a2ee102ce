"""Rebuild a model's modules from its config, without weights and without random init: what loading fills.

Parameters are created on the meta device (no memory, no init cost: 0.05 s for SmolLM2-135M against
about a second with random init). Buffers are created for real, because the ones that are not saved
(rotary ``inv_freq``, ``position_ids``) are computed by the modules' constructors and must be right after
loading. The class is found by name only as an attribute of the installed ``transformers`` package:
nothing from a saved folder is imported or executed unless the user passes ``trust_remote_code=True``.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch

from smashlib.errors import SmashedModelLoadError
from smashlib.layers.expert_linears import has_split_experts

#: How a saved model's class is found again: an attribute of transformers, custom code shipped in the
#: folder (transformers' auto_map), or a plain torch module the user rebuilds and passes as ``model=``.
TRANSFORMERS, CUSTOM_CODE, PLAIN = "transformers", "custom_code", "plain"


def _no_init_weights():
    try:  # transformers 5
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def _is_transformers_class(cls: type) -> bool:
    if not cls.__module__.startswith("transformers."):
        return False
    import transformers

    return getattr(transformers, cls.__name__, None) is cls


def dtype_name(model: torch.nn.Module) -> str | None:
    """The dtype of the model's first floating-point tensor, e.g. 'float32' (None when it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return str(tensor.dtype).removeprefix("torch.")
    return None


def computed_buffer_dtypes(model: torch.nn.Module) -> dict[str, str]:
    """dtype of each floating buffer the weights file does not hold (non-persistent: rotary inverse
    frequencies, position ids), by name. The skeleton recomputes them in the dtype the model code chooses
    (float32 for rotary frequencies), but ``model.to(torch.bfloat16)`` casts them: recorded so that a loaded
    model computes as the saved one did."""
    dtypes = {}
    for prefix, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None and buffer.is_floating_point():
                dtypes[f"{prefix}.{name}" if prefix else name] = str(buffer.dtype).removeprefix("torch.")
    return dtypes


def restore_buffer_dtypes(model: torch.nn.Module, dtypes: dict[str, str]) -> None:
    """Cast the non-persistent buffers named in ``dtypes`` (see :func:`computed_buffer_dtypes`) back to them."""
    for name, dtype_text in dtypes.items():
        owner_name, _, buffer_name = name.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
        except AttributeError:
            continue  # a module an algorithm replaced or removed: nothing to restore
        buffer = owner._buffers.get(buffer_name)
        dtype = getattr(torch, dtype_text, None)
        if buffer is not None and isinstance(dtype, torch.dtype) and buffer.dtype != dtype:
            owner._buffers[buffer_name] = buffer.to(dtype)


def describe_model(model: torch.nn.Module) -> dict[str, Any]:
    """What smash_config.json records to rebuild ``model``'s module tree."""
    cls = type(model)
    config = getattr(model, "config", None)
    if _is_transformers_class(cls):
        library = TRANSFORMERS
    elif getattr(model, "_auto_class", None) and config is not None:  # registered with register_for_auto_class
        library = CUSTOM_CODE
    else:
        library = PLAIN
    return {
        "library": library,
        "class": cls.__name__,
        "module": cls.__module__,
        "auto_class": getattr(model, "_auto_class", None) if library == CUSTOM_CODE else None,
        "attn_implementation": saved_attention(getattr(config, "_attn_implementation", None)) if config is not None else None,
        "dtype": dtype_name(model),
        # the Hub id it came from, for the model card's base_model (a local path is not recorded: it is private)
        "source": _hub_id(getattr(config, "_name_or_path", None)),
        "buffer_dtypes": computed_buffer_dtypes(model),
        # smash() gave each MoE expert its own linear layers (smashlib.layers.expert_linears): so must loading
        **({"split_experts": True} if has_split_experts(model) else {}),
    }


def _hub_id(name: Any) -> str | None:
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or Path(name).exists():
        return None
    return name


def save_custom_code(model: torch.nn.Module, folder: Path) -> None:
    """Copy the source files of a custom-code model next to its config, as transformers does."""
    from transformers.dynamic_module_utils import custom_object_save

    custom_object_save(model, str(folder), config=model.config)


def model_class(description: dict[str, Any], folder: Path, trust_remote_code: bool) -> tuple[type, Any]:
    """(class, config) for a saved transformers model, from ``description`` and ``folder/config.json``."""
    import transformers

    library, name = description.get("library"), description.get("class")
    if library in (TRANSFORMERS, CUSTOM_CODE) and not (folder / "config.json").is_file():
        # transformers would quietly build its default configuration (a 32000-token Llama) instead
        raise SmashedModelLoadError(
            f"{folder / 'config.json'} is missing: the folder is incomplete (a {name} is rebuilt from it). "
            "Save or download the folder again, or build the model yourself and pass it as model=."
        )
    if library == TRANSFORMERS:
        cls = getattr(transformers, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            raise SmashedModelLoadError(
                f"{folder} holds a {name}, which this transformers ({transformers.__version__}) does not have: "
                "upgrade transformers, or build the model yourself and pass it as model=."
            )
        try:
            config = cls.config_class.from_pretrained(folder)
        except Exception as error:  # noqa: BLE001 - missing, not JSON, wrong fields: all one message
            raise SmashedModelLoadError(f"{folder / 'config.json'} cannot be read: {error}") from None
        return cls, config
    if library == CUSTOM_CODE:
        if not trust_remote_code:
            raise SmashedModelLoadError(
                f"{folder} holds a custom-code model ({name}) whose Python files are in the folder; smashlib never "
                "runs code from a folder on its own. Read those files, then pass trust_remote_code=True, or build "
                "the model yourself and pass it as model=."
            )
        from transformers import AutoConfig
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)  # True: checked above
        reference = (getattr(config, "auto_map", None) or {}).get(description.get("auto_class"))
        if reference is None:
            raise SmashedModelLoadError(
                f"{folder / 'config.json'} has no auto_map entry for {description.get('auto_class')}: "
                "build the model yourself and pass it as model=."
            )
        return get_class_from_dynamic_module(reference, str(folder)), config
    raise SmashedModelLoadError(
        f"{folder} holds a plain torch module ({description.get('module')}.{name}), which smashlib cannot build "
        "from a config: build one (its weights do not matter) and pass it as "
        "SmashedModel.from_pretrained(path, model=your_model)."
    )


def saved_attention(name: str | None) -> str | None:
    """The attention implementation a folder records: smashlib's float32-decode SDPA is saved as the "sdpa" it
    wraps (a fresh process has not registered it; the algorithm that chose it switches to it after loading).
    Recorded once, here, when saving: folders never name it."""
    from smashlib.layers.decode_attention import NAME

    return "sdpa" if name == NAME else name


def build_skeleton(cls: type, config: Any, attn_implementation: str | None = None) -> torch.nn.Module:
    """An instance of the transformers class ``cls`` for ``config``: parameters on meta, buffers computed."""
    from accelerate import init_empty_weights

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    # _from_config applies config.dtype as the default dtype while building, as from_pretrained does,
    # so buffers created from the default dtype come out as in the saved model
    try:
        with _no_init_weights(), init_empty_weights(include_buffers=False):
            model = cls._from_config(copy.deepcopy(config), **kwargs)
    except Exception as error:  # noqa: BLE001 - a config transformers refuses, whatever the exception
        raise SmashedModelLoadError(
            f"transformers cannot build a {cls.__name__} from this config.json"
            f"{f' with attn_implementation={attn_implementation!r}' if attn_implementation else ''}: "
            f"{type(error).__name__}: {error}"
        ) from None
    # no_init_weights also skips the tying that init_weights does; tie as a built model is tied, since
    # an algorithm's prepare_for_loading may ask (is lm_head's weight the embedding's?)
    model.tie_weights()
    return model.eval()
