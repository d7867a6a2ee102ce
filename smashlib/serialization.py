"""Save a SmashedModel to a folder and load it back, exactly, without calibration data.

The folder::

    config.json, generation_config.json   the wrapped transformers model's own configs
    model.safetensors                     the smashed model's state dict as it is (int8 / packed tensors
                                          stay compressed, so the size on disk shows the compression)
    smash_config.json                     the SmashConfig plus "saved_model": the algorithms in the order
                                          applied with their settings, versions, model class, checksum
    tokenizer / processor files           when attached to the SmashConfig

Loading never repeats the expensive work: the model's modules are rebuilt from config.json without
weights (see :mod:`smashlib.skeleton`), each algorithm that changed the weights turns them into its own
structure (``prepare_for_loading``), the saved tensors are put in place, and each algorithm finishes
(``after_loading``: repacking kernels, hooks; runtime algorithms such as compilers are applied again).
Only safetensors and JSON are read: nothing is unpickled, nothing from the folder is executed.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from smashlib import registry
from smashlib.algorithm import Algorithm
from smashlib.atomic import atomic_folder, readable_folder
from smashlib.config import SmashConfig
from smashlib.errors import (
    SmashConfigError,
    SmashedModelLoadError,
    SmashError,
    UnknownNameError,
    UnsupportedModelError,
)
from smashlib.skeleton import build_skeleton, describe_model, model_class, save_custom_code

if TYPE_CHECKING:
    from smashlib.model import SmashedModel

#: Version of the saved-folder layout ("saved_model" in smash_config.json). Raise it when a change would
#: make an older smashlib misread a folder; loading a newer one is refused with a clear error.
FORMAT_VERSION = 1
MANIFEST_FILE = "smash_config.json"
WEIGHTS_FILE = "model.safetensors"
#: safetensors metadata keys (the weights file describes its own shared tensors)
TIED_KEY = "smashlib.tied"
OWNERS_KEY = "smashlib.owners"


# ====================================================================== tensors: shared storage
def split_shared(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to write, {alias: kept name}) for a state dict whose tensors may share memory.

    safetensors refuses tensors that share storage (an lm_head tied to the input embeddings appears
    twice in the state dict). Identical views are written once and recorded as aliases, so loading can
    tie them again; partly overlapping views (rare) are written as separate copies.
    """
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[tuple[str, int]] = set()
    for name, tensor in state.items():
        if tensor.numel() == 0:  # every empty tensor reports the same address
            tensors[name] = tensor.contiguous()
            continue
        view = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if view in seen:
            tied[name] = seen[view]
            continue
        seen[view] = name
        storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
        shares_storage = storage in storages
        storages.add(storage)
        tensors[name] = tensor.clone(memory_format=torch.contiguous_format) if shares_storage else tensor.contiguous()
    return tensors, tied


def retie(model: torch.nn.Module, tied: Mapping[str, str]) -> None:
    """Make each alias the very tensor object of the name it was saved under, as before saving."""
    for alias, kept in tied.items():
        owner_name, _, attribute = kept.rpartition(".")
        owner = model.get_submodule(owner_name)
        tensor = owner._parameters.get(attribute, owner._buffers.get(attribute))
        alias_owner_name, _, alias_attribute = alias.rpartition(".")
        alias_owner = model.get_submodule(alias_owner_name)
        slot = alias_owner._parameters if alias_attribute in alias_owner._parameters else alias_owner._buffers
        if type(slot.get(alias_attribute)) is type(tensor):
            slot[alias_attribute] = tensor


def _refuse_unsaveable(state: Mapping[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise SmashError(f"cannot save '{name}': the state dict holds a {type(tensor).__name__}, not a tensor.")
        if is_traceable_wrapper_subclass(tensor):  # torchao-style: the data live in inner tensors
            raise SmashError(
                f"cannot save '{name}': it is a {type(tensor).__name__}, a tensor subclass whose data are inner "
                "tensors; safetensors stores plain tensors only. The algorithm that made it must put the inner "
                "tensors in the state dict (see docs/save_and_load.md, 'Making an algorithm saveable')."
            )
        if tensor.is_meta:
            raise SmashError(f"cannot save '{name}': it is on the meta device (it holds no data).")


def _specs(model: torch.nn.Module) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {name: (t.dtype, tuple(t.shape)) for name, t in model.state_dict().items()}


# ====================================================================== what an algorithm owns
def tensor_owners(model: torch.nn.Module, config: SmashConfig) -> dict[str, list[str]] | None:
    """{algorithm: names of the tensors whose structure it created}, by rebuilding the model's skeleton
    (meta tensors, no memory) and replaying each algorithm's ``prepare_for_loading``.

    Also the check that loading will work: a mismatch with the real state dict means the folder could
    not be loaded without passing ``model=``, which is said at save time rather than discovered later.
    None when the model cannot be rebuilt from its config (plain torch modules).
    """
    import warnings

    from smashlib.skeleton import TRANSFORMERS

    description = describe_model(model)
    if description["library"] != TRANSFORMERS:
        return None
    try:
        skeleton = build_skeleton(type(model), model.config, description["attn_implementation"])
        specs = _specs(skeleton)
        owners: dict[str, str] = {}
        with torch.device("meta"):
            for algorithm in config.chosen_algorithms():
                if not algorithm.saves_state:
                    continue
                skeleton = algorithm.prepare_for_loading(skeleton, config.settings_for(algorithm))
                after = _specs(skeleton)
                owners.update({name: algorithm.name for name, spec in after.items() if specs.get(name) != spec})
                specs = after
    except Exception:  # noqa: BLE001 - any failure here only means no owners; the real load will tell
        return None
    saved = _specs(model)
    problems = _spec_problems(specs, saved)
    if problems:
        warnings.warn(
            f"this smashed model differs from what its config and algorithms rebuild ({problems}); the saved folder "
            "will need SmashedModel.from_pretrained(path, model=<a model with this structure>).",
            stacklevel=4,
        )
    grouped: dict[str, list[str]] = {}
    for name, owner in owners.items():
        if name in saved:
            grouped.setdefault(owner, []).append(name)
    return grouped


def _fit_problems(missing: list[str], unexpected: list[str], reshaped: list[str] = ()) -> str:
    """'' when nothing is listed, else one readable sentence about what differs."""

    def some(names) -> str:
        names = sorted(names)
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")

    parts = []
    if missing:
        parts.append(f"missing from the weights: {some(missing)}")
    if unexpected:
        parts.append(f"not in the rebuilt model: {some(unexpected)}")
    if reshaped:
        parts.append(f"other shapes: {some(reshaped)}")
    return "; ".join(parts)


def _spec_problems(expected: Mapping[str, tuple], saved: Mapping[str, tuple]) -> str:
    """What keeps ``saved`` (name -> (dtype, shape)) from loading into a model expecting ``expected``.

    Names the model does not expect are not counted: a module may consume extra entries in its own
    ``_load_from_state_dict`` (bitsandbytes' quantization state does), which only a real load can tell.
    """
    missing = [name for name in expected if name not in saved]
    reshaped = [
        f"{name} {tuple(saved[name][1])} vs {tuple(spec[1])}"
        for name, spec in expected.items()
        if name in saved and tuple(saved[name][1]) != tuple(spec[1])
    ]
    return _fit_problems(missing, [], reshaped)


# ====================================================================== save
def _versions() -> dict[str, str]:
    """Versions of what wrote the folder (read from package metadata: importing transformers takes seconds)."""
    from smashlib import __version__

    versions = {"smashlib": __version__, "torch": torch.__version__}
    for package in ("transformers", "safetensors"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    versions["python"] = platform.python_version()
    return versions


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place and at the same length.

    safetensors writes the metadata from a Rust HashMap, in a different order on every save; sorted,
    the same model always gives the same bytes (stable checksums, no needless re-upload to the Hub).
    """
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None)
        if not metadata:
            return
        text = json.dumps(
            {"__metadata__": dict(sorted(metadata.items())), **header}, separators=(",", ":"), ensure_ascii=False
        ).encode()
        if len(text) <= length:  # always, as only the order changed; padding spaces are part of the format
            handle.seek(8)
            handle.write(text + b" " * (length - len(text)))


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor], tied: dict[str, str], owners) -> dict[str, Any]:
    metadata = {"format": "pt", TIED_KEY: json.dumps(tied, sort_keys=True)}
    if owners is not None:
        metadata[OWNERS_KEY] = json.dumps(owners, sort_keys=True)
    path = folder / WEIGHTS_FILE
    save_file(tensors, str(path), metadata=metadata)
    _sort_header_metadata(path)
    return {"file": WEIGHTS_FILE, "bytes": path.stat().st_size, "sha256": file_sha256(path), "tensors": len(tensors)}


def _write_model_files(model: torch.nn.Module, config: SmashConfig, folder: Path, library: str) -> dict[str, bool]:
    """config.json, generation_config.json, custom code, tokenizer and processor files; says which exist."""
    from smashlib.skeleton import CUSTOM_CODE

    written = {"config": False, "generation_config": False, "tokenizer": False, "processor": False}
    if library == CUSTOM_CODE:  # first: it records the classes' files in the config's auto_map
        save_custom_code(model, folder)
    model_config = getattr(model, "config", None)
    if model_config is not None and hasattr(model_config, "save_pretrained"):
        model_config.save_pretrained(folder)
        written["config"] = True
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and hasattr(generation_config, "save_pretrained"):
        generation_config.save_pretrained(folder)
        written["generation_config"] = True
    for name in ("tokenizer", "processor"):
        component = getattr(config.components, name)
        if component is not None and hasattr(component, "save_pretrained"):
            component.save_pretrained(folder)
            written[name] = True
    return written


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with open(folder / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, default=str)
        handle.write("\n")


def _is_saved_model(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file()


def save_smashed_model(smashed: SmashedModel, save_directory: str | os.PathLike) -> Path:
    """Write ``smashed`` to ``save_directory`` atomically (see :mod:`smashlib.atomic`) and return its path."""
    model, config = smashed.model, smashed.smash_config
    state = model.state_dict()
    _refuse_unsaveable(state)
    tensors, tied = split_shared(state)
    owners = tensor_owners(model, config)
    description = describe_model(model)
    algorithms = [
        {
            "name": algorithm.name,
            "group": algorithm.group,
            "restored": "from the weights" if algorithm.saves_state else "applied again at load",
            "settings": config.settings_for(algorithm),
        }
        for algorithm in config.chosen_algorithms()
    ]
    manifest = config.to_json_dict()
    with atomic_folder(save_directory, is_ours=_is_saved_model) as staging:
        weights = _write_weights(staging, tensors, tied, owners)
        files = _write_model_files(model, config, staging, description["library"])
        manifest["saved_model"] = {
            "schema_version": FORMAT_VERSION,
            "versions": _versions(),
            "algorithms": algorithms,
            "model": description,
            "weights": weights,
            "files": files,
        }
        if getattr(smashed, "report", None) is not None:  # so that a model card made after reloading has it
            from smashlib.hub import report_markdown

            manifest["saved_model"]["report"] = {"markdown": report_markdown(smashed.report)}
        _write_manifest(staging, manifest)
    return Path(save_directory)


# ====================================================================== load
def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """smash_config.json of a saved folder, checked to be one this smashlib can read."""
    from smashlib import __version__

    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        hint = " (it holds a config.json: a plain transformers model; load it with transformers)" if (
            Path(folder) / "config.json"
        ).is_file() else ""
        raise SmashedModelLoadError(f"{folder} is not a model saved by smashlib: it has no {MANIFEST_FILE}{hint}.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SmashedModelLoadError(f"{path} is damaged (not valid JSON: {error}); save the model again.") from None
    saved = manifest.get("saved_model") if isinstance(manifest, dict) else None
    if not isinstance(saved, dict) or not isinstance(saved.get("schema_version"), int):
        raise SmashedModelLoadError(f"{path} has no valid 'saved_model' section: the folder is damaged; save it again.")
    if saved["schema_version"] > FORMAT_VERSION:
        raise SmashedModelLoadError(
            f"{folder} was saved by smashlib {saved.get('versions', {}).get('smashlib', '?')} in folder format "
            f"{saved['schema_version']}; this smashlib ({__version__}) reads formats up to {FORMAT_VERSION}: "
            "upgrade smashlib (pip install -U smashlib)."
        )
    return manifest


def _check_algorithms(manifest: dict[str, Any], folder: Path, device: str) -> list[Algorithm]:
    """The saved algorithms, in the order applied, each checked to be installed and to run on ``device``."""
    from smashlib import __version__

    found = []
    saved_by = manifest["saved_model"].get("versions", {}).get("smashlib", "?")
    for entry in manifest["saved_model"].get("algorithms", []):
        name = entry.get("name")
        try:
            algorithm = registry.get_algorithm(name)
        except UnknownNameError:
            raise SmashedModelLoadError(
                f"{folder} was smashed with '{name}' (by smashlib {saved_by}), an algorithm this smashlib "
                f"({__version__}) does not have: upgrade smashlib, or install the package that provides '{name}'."
            ) from None
        algorithm.validate_environment(device, context=f"{folder} was smashed with '{name}', which")
        found.append(algorithm)
    return found


def _choose_device(manifest: dict[str, Any], device: str | torch.device | None) -> str:
    if device is not None:
        return torch.device(device).type
    saved = manifest.get("device", "cpu")
    return saved if saved != "cuda" or torch.cuda.is_available() else "cpu"


def _read_weights(folder: Path, manifest: dict[str, Any], device: str, verify: bool) -> tuple[dict, dict[str, str]]:
    record = manifest["saved_model"].get("weights", {})
    path = folder / record.get("file", WEIGHTS_FILE)
    if not path.is_file():
        raise SmashedModelLoadError(f"{path} is missing: the folder is incomplete; save or download it again.")
    if verify and record.get("sha256") and file_sha256(path) != record["sha256"]:
        raise SmashedModelLoadError(
            f"{path} is corrupt: its checksum differs from the one in {MANIFEST_FILE}. Save or download it again."
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path), device=device)
        tied = json.loads(metadata.get(TIED_KEY, "{}"))
    except (SafetensorError, OSError, ValueError) as error:
        raise SmashedModelLoadError(f"{path} is not a readable safetensors file ({error}); save or download it again.") from None
    for alias, kept in tied.items():
        if kept not in state:
            raise SmashedModelLoadError(f"{path} is damaged: '{alias}' is tied to '{kept}', which it does not hold.")
        state[alias] = state[kept]
    return state, tied


def _run_hook(algorithm: Algorithm, hook: str, model: torch.nn.Module, settings: dict, **extra: Any) -> torch.nn.Module:
    try:
        result = getattr(algorithm, hook)(model, settings, **extra)
    except SmashError:
        raise
    except Exception as error:
        raise SmashedModelLoadError(
            f"{algorithm.name}.{hook} failed while loading: {type(error).__name__}: {error}"
        ) from error
    return model if result is None else result


def _put_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path, algorithms) -> None:
    """Load ``state`` into ``model`` (its tensors become the model's, no copy), or say clearly what does not fit."""

    def refuse(problems: str) -> SmashedModelLoadError:
        names = ", ".join(a.name for a, _ in algorithms) or "no algorithm"
        return SmashedModelLoadError(
            f"the weights in {folder} do not fit the model rebuilt from its config.json and algorithms ({names}): "
            f"{problems}. The folder is damaged or was written by an incompatible smashlib; if you passed model=, "
            "it must have the architecture of the model that was smashed."
        )

    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # size mismatches: torch lists them, one per line
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise refuse("; ".join(lines[:5]) + (f" (+{len(lines) - 5} more)" if len(lines) > 5 else "")) from None
    problems = _fit_problems(result.missing_keys, result.unexpected_keys)
    if problems:
        raise refuse(problems)


def _attach_components(config: SmashConfig, folder: Path, files: Mapping[str, bool], trust_remote_code: bool) -> None:
    if files.get("tokenizer"):
        from transformers import AutoTokenizer

        config.components.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if files.get("processor"):
        from transformers import AutoProcessor

        config.components.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)


def load_smashed_model(
    path_or_repo_id: str | os.PathLike,
    device: str | torch.device | None = None,
    model: torch.nn.Module | None = None,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    verify_checksum: bool = True,
) -> SmashedModel:
    """Load a folder written by :func:`save_smashed_model`, or a Hub repository holding one."""
    from smashlib.hub import resolve_folder
    from smashlib.model import SmashedModel

    folder = readable_folder(resolve_folder(path_or_repo_id, revision=revision, token=token))
    manifest = read_manifest(folder)
    saved = manifest["saved_model"]
    device = _choose_device(manifest, device)
    checked = _check_algorithms(manifest, folder, device)
    try:
        config = SmashConfig.from_json_dict(manifest, device=device)
    except SmashConfigError as error:
        raise SmashedModelLoadError(f"{folder / MANIFEST_FILE} cannot be used: {error}") from None
    # settings from the config, so a hyperparameter added since the save gets its default
    algorithms = [(algorithm, config.settings_for(algorithm)) for algorithm in checked]
    if model is None:
        description = saved.get("model", {})
        cls, model_config = model_class(description, folder, trust_remote_code)
        model = build_skeleton(cls, model_config, description.get("attn_implementation"))
    elif not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"model= takes a torch.nn.Module with the smashed model's architecture, not {type(model).__name__}.")
    # on the meta device, layers an algorithm creates hold no memory until the saved tensors are assigned:
    # allocating them for real (zeros) only to throw them away cost 3 of SmolLM2's 4 s of loading
    with torch.device("meta"):
        for algorithm, settings in algorithms:
            if algorithm.saves_state:
                model = _run_hook(algorithm, "prepare_for_loading", model, settings)
    state, tied = _read_weights(folder, manifest, device, verify_checksum)
    _put_weights(model, state, folder, algorithms)
    retie(model, tied)
    model = model.to(device).eval()
    still_empty = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_empty:
        raise SmashedModelLoadError(
            f"after loading, {', '.join(still_empty[:5])} hold no data (meta tensors not in the saved weights): an "
            "algorithm's prepare_for_loading created tensors it does not save; they must be computed in after_loading."
        )
    if saved.get("files", {}).get("generation_config") and hasattr(model, "generation_config"):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder)
    # components first: runtime algorithms are applied again with them (ifw decodes with the saved processor)
    _attach_components(config, folder, saved.get("files", {}), trust_remote_code)
    for algorithm, settings in algorithms:
        extra = {} if algorithm.saves_state else {"components": config.components}
        model = _run_hook(algorithm, "after_loading", model, settings, **extra)
    return SmashedModel(model, config)
