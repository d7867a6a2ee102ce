"""Save a SmashedModel's model and config to a folder and load them back, exactly, without calibration data.

The folder::

    config.json, generation_config.json   the wrapped transformers model's own configs
    model.safetensors                     the smashed model's state dict as it is (int8 / packed tensors
                                          stay compressed, so the size on disk shows the compression)
    smash_config.json                     the SmashConfig plus "saved_model": the algorithms in the order
                                          applied with their settings, versions, model class, checksum,
                                          the list of files written (see :mod:`smashlib.manifest`)
    tokenizer / processor files           when attached to the SmashConfig

Loading never repeats the expensive work: the model's modules are rebuilt from config.json without
weights (see :mod:`smashlib.skeleton`), checked against the weights file's header, each algorithm that
changed the weights turns them into its own structure (``prepare_for_loading``), the saved tensors are
put in place, and each algorithm finishes (``after_loading``: repacking kernels, hooks; runtime
algorithms such as compilers are applied again). Only safetensors and JSON are read: nothing is
unpickled, nothing from the folder is executed, no file outside the folder is opened.

This module knows nothing of :class:`~smashlib.model.SmashedModel` or the Hub's model card: it takes and
returns a model and a SmashConfig, and resolves a Hub repo id to a folder (a download) itself.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
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
from smashlib.layers.expert_linears import has_split_experts, split_experts
from smashlib.manifest import FORMAT_VERSION, MANIFEST_FILE, WEIGHTS_FILE, read_manifest
from smashlib.skeleton import (
    TRANSFORMERS,
    build_skeleton,
    describe_model,
    dtype_name,
    model_class,
    restore_buffer_dtypes,
    save_custom_code,
)

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "WEIGHTS_FILE", "load_smashed_model", "read_manifest",
           "resolve_folder", "save_smashed_model"]

#: safetensors metadata keys (the weights file describes its own shared tensors)
TIED_KEY = "smashlib.tied"
OWNERS_KEY = "smashlib.owners"
#: safetensors' own limit on the header; a larger length field means the file is not safetensors
MAX_HEADER_BYTES = 100_000_000
#: torch's CPU allocator aligns every tensor to 64 bytes; kernels chosen by alignment then match the saved model's
ALIGNMENT = 64


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

    Also the check that loading will work, said at save time rather than discovered later: a model its
    config cannot rebuild, or a mismatch with the real state dict, is a warning that loading will need
    ``model=``; an algorithm whose ``prepare_for_loading`` fails is an error, since loading would fail
    the same way. None when the model is not a transformers class (plain torch modules).
    """
    description = describe_model(model)
    if description["library"] != TRANSFORMERS:
        return None
    try:
        skeleton = build_skeleton(type(model), model.config, description["attn_implementation"])
    except SmashedModelLoadError as error:
        warnings.warn(
            f"this smashed model cannot be rebuilt from its config ({error}); the saved folder will need "
            "SmashedModel.from_pretrained(path, model=<a model with this structure>).",
            stacklevel=4,
        )
        return None
    if has_split_experts(model):
        split_experts(skeleton)
    specs = _specs(skeleton)
    owners: dict[str, str] = {}
    with torch.device("meta"):
        for algorithm in config.chosen_algorithms():
            if not algorithm.saves_state:
                continue
            try:
                skeleton = algorithm.prepare_for_loading(skeleton, config.settings_for(algorithm))
            except Exception as error:
                raise SmashError(
                    f"this model could be saved but not loaded again: {algorithm.name}.prepare_for_loading fails on "
                    f"the model rebuilt from its config ({type(error).__name__}: {error}). This is a bug in "
                    f"'{algorithm.name}': please report it."
                ) from error
            after = _specs(skeleton)
            owners.update({name: algorithm.name for name, spec in after.items() if specs.get(name) != spec})
            specs = after
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
        model_config = copy.copy(model_config)
        # as transformers' save_pretrained does: the dtype the model computes in, which config.dtype does not
        # hold after model.to(torch.bfloat16); loading builds the model in it (a tied embedding's output dtype)
        dtype = dtype_name(model)
        if dtype is not None and hasattr(model_config, "dtype"):
            model_config.dtype = dtype
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


def report_record(report: Any) -> dict[str, Any]:
    """The evaluation report as JSON for smash_config.json (the Hub's model card is rendered from it at push time)."""
    for method in ("to_dict", "to_json"):
        render = getattr(report, method, None)
        if callable(render):
            payload = render()
            return {"json": json.loads(payload) if isinstance(payload, str) else json.loads(json.dumps(payload, default=str))}
    render = getattr(report, "to_markdown", None)
    return {"markdown": str(render() if callable(render) else report)}


def folder_contents(folder: Path) -> list[str]:
    """Every entry under ``folder`` as a relative POSIX path: files, links, and folders holding nothing (with '/')."""
    found = []
    for root, folders, files in os.walk(folder):
        relative = Path(root).relative_to(folder)
        for name in files:
            found.append((relative / name).as_posix())
        for name in list(folders):
            if (Path(root) / name).is_symlink():  # os.walk does not enter it; it is an entry of its own
                found.append((relative / name).as_posix())
                folders.remove(name)
        if not files and not folders and relative != Path("."):
            found.append(relative.as_posix() + "/")
    return sorted(found)


def _some(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_replaceable(folder: Path) -> None:
    """Raise unless ``folder`` is provably a complete smashlib save holding nothing else (saving replaces it whole).

    Proof: its smash_config.json reads and fits the schema, lists the files that save wrote (``contents``),
    every one of them is there, the weights have the size recorded, and nothing else is in the folder.
    """
    present = folder_contents(folder)
    opening = f"cannot save to {folder}: saving replaces the whole folder, and"
    fix = "Move those files out, or save to a new or empty folder."
    try:
        manifest = read_manifest(folder)
    except SmashedModelLoadError as error:
        raise SmashError(
            f"{opening} the folder holds other files ({_some(present)}) and is not a complete smashlib save "
            f"({error}). {fix}"
        ) from None
    saved = manifest["saved_model"]
    contents = saved.get("contents")
    if contents is None:
        raise SmashError(
            f"{opening} it was written by an older smashlib that did not record which files it wrote, so they cannot "
            f"be told apart from yours ({_some(present)}). Delete the folder yourself if nothing in it is yours, "
            "or save to another folder."
        )
    ours = {*contents, MANIFEST_FILE}
    missing = sorted(set(contents) - set(present))
    weights = folder / saved["weights"]["file"]
    if missing or not weights.is_file() or weights.stat().st_size != saved["weights"]["bytes"]:
        what = f"missing {_some(missing)}" if missing else f"{weights.name} differs from the size recorded"
        raise SmashError(f"{opening} it is not a complete smashlib save ({what}): it may hold your work. {fix}")
    foreign = [name for name in present if name not in ours]
    if foreign:
        raise SmashError(
            f"{opening} besides the smashlib save it holds other files: {_some(foreign)}. They would be deleted. {fix}"
        )


def save_smashed_model(
    model: torch.nn.Module, config: SmashConfig, save_directory: str | os.PathLike, report: Any = None
) -> Path:
    """Write ``model`` (smashed with ``config``) to ``save_directory`` atomically (see :mod:`smashlib.atomic`).

    ``report``: an evaluation report whose figures are kept in smash_config.json (as JSON) for the model card.
    """
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
    with atomic_folder(save_directory, check_replaceable=check_replaceable) as staging:
        try:
            weights = _write_weights(staging, tensors, tied, owners)
            files = _write_model_files(model, config, staging, description["library"])
            manifest["saved_model"] = {
                "schema_version": FORMAT_VERSION,
                "versions": _versions(),
                "algorithms": algorithms,
                "model": description,
                "weights": weights,
                "files": files,
                "contents": folder_contents(staging),
            }
            if report is not None:
                manifest["saved_model"]["report"] = report_record(report)
            _write_manifest(staging, manifest)
        except (SafetensorError, OSError) as error:  # a full disk, a read-only folder
            raise SmashError(
                f"cannot write the saved model to {Path(save_directory)}: {error}. Nothing was changed there; free "
                "some space (or choose a writable folder) and save again."
            ) from None
    return Path(save_directory)


# ====================================================================== load: the hooks
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


# ====================================================================== load: finding the folder
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$|^[\w.-]+$")


def resolve_folder(path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> Path:
    """A local folder for ``path_or_repo_id``: the path itself when it exists, else a Hub snapshot."""
    path = Path(path_or_repo_id).expanduser()
    if readable_folder(path).exists():
        if not readable_folder(path).is_dir():
            raise SmashedModelLoadError(f"{path} is a file; give the folder save_pretrained wrote.")
        return path
    name = str(path_or_repo_id)
    not_a_repo = SmashedModelLoadError(f"no folder at {path}, and '{name}' is not a Hub repo id (owner/name).")
    if isinstance(path_or_repo_id, os.PathLike) or not _REPO_ID.match(name) or name.startswith((".", "~")):
        raise not_a_repo
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:  # 'owner/..', 'a--b': the Hub's own rules
        raise not_a_repo from None
    try:
        return Path(snapshot_download(name, revision=revision, token=token))
    except GatedRepoError:
        raise SmashedModelLoadError(f"'{name}' is gated on the Hub: accept its terms on the website, then pass token=.") from None
    except RepositoryNotFoundError:
        raise SmashedModelLoadError(
            f"no folder at {path}, and no Hub repository '{name}' (or it is private: pass token=)."
        ) from None
    except RevisionNotFoundError:
        raise SmashedModelLoadError(f"the Hub repository '{name}' has no revision '{revision}'.") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise SmashedModelLoadError(
            f"no folder at {path}, and '{name}' is not (completely) in the Hub cache while the Hub cannot be reached "
            f"({str(error).splitlines()[0]}). Connect (unset HF_HUB_OFFLINE) or pass a local folder."
        ) from None
    except HFValidationError as error:
        raise SmashedModelLoadError(f"'{name}' cannot be downloaded: {error}") from None
    except (HfHubHTTPError, OSError) as error:
        raise SmashedModelLoadError(f"downloading '{name}' from the Hub failed: {error}") from None


# ====================================================================== load: checks before building anything
def _check_algorithms(manifest: dict[str, Any], folder: Path, device: str) -> list[Algorithm]:
    """The saved algorithms, in the order applied, each checked to be installed and to run on ``device``."""
    from smashlib import __version__

    found = []
    saved_by = manifest["saved_model"].get("versions", {}).get("smashlib", "?")
    for entry in manifest["saved_model"]["algorithms"]:
        name = entry["name"]
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


def _config_of(manifest: dict[str, Any], folder: Path, device: str, algorithms: list[Algorithm]) -> SmashConfig:
    """The saved SmashConfig, checked to choose the very algorithms the manifest says were applied."""
    path = folder / MANIFEST_FILE
    try:
        config = SmashConfig.from_json_dict(manifest, device=device)
    except SmashConfigError as error:
        raise SmashedModelLoadError(f"{path} cannot be used: {error}") from None
    chosen = [algorithm.name for algorithm in config.chosen_algorithms()]
    listed = [algorithm.name for algorithm in algorithms]
    if chosen != listed:
        raise SmashedModelLoadError(
            f"{path} contradicts itself: field 'values' chooses {chosen or 'no algorithm'}, field "
            f"'saved_model.algorithms' lists {listed or 'none'}. The file was edited; save the model again."
        )
    return config


def _choose_device(manifest: dict[str, Any], device: str | torch.device | None) -> str:
    if device is not None:
        try:
            return torch.device(device).type
        except (RuntimeError, TypeError):
            raise SmashedModelLoadError(f"device={device!r} is not a device: use 'cpu' or 'cuda'.") from None
    saved = manifest.get("device", "cpu")
    return saved if saved != "cuda" or torch.cuda.is_available() else "cpu"


def _weights_path(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / manifest["saved_model"]["weights"]["file"]  # inside the folder: the schema checked the name
    if not path.is_file():
        raise SmashedModelLoadError(f"{path} is missing: the folder is incomplete; save or download it again.")
    return path


def _unreadable(path: Path, why: str) -> SmashedModelLoadError:
    return SmashedModelLoadError(f"{path} is not a readable safetensors file ({why}); save or download it again.")


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({tensor name: shape}, metadata) from a safetensors file's header alone (no tensor is read)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            start = handle.read(8)
            if len(start) < 8:
                raise _unreadable(path, "shorter than a header")
            (length,) = struct.unpack("<Q", start)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise _unreadable(path, f"its header claims {length} bytes")
            header = json.loads(handle.read(length))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _unreadable(path, f"header: {error}") from None
    except OSError as error:
        raise _unreadable(path, error.strerror or str(error)) from None
    if type(header) is not dict:
        raise _unreadable(path, "its header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    shapes = {}
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise _unreadable(path, f"tensor '{name}' has no valid shape")
        shapes[name] = tuple(shape)
    if type(metadata) is not dict or not all(isinstance(v, str) for v in metadata.values()):
        raise _unreadable(path, "its metadata is not a map of strings")
    return shapes, metadata


def _json_metadata(path: Path, metadata: Mapping[str, str], key: str, kind: type) -> Any:
    """A JSON value smashlib keeps in the weights' metadata: {alias: name} or {algorithm: [names]}."""
    if key not in metadata:
        return None
    try:
        value = json.loads(metadata[key])
    except (json.JSONDecodeError, RecursionError):
        value = None
    items = value.values() if type(value) is dict else None
    well_formed = items is not None and all(
        isinstance(v, str) if kind is str else (type(v) is list and all(isinstance(n, str) for n in v)) for v in items
    )
    if not well_formed:
        raise SmashedModelLoadError(
            f"{path} is damaged: its metadata '{key}' is not a map of {'names' if kind is str else 'name lists'}; "
            "save or download it again."
        )
    return value


def _numbered_blocks(names) -> dict[str, int]:
    """{prefix: how many numbered children the names hold}, e.g. {'model.layers': 2} for model.layers.0/1.*"""
    counts: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        for index, part in enumerate(parts[:-1]):
            if part.isdigit():
                prefix = ".".join(parts[:index])
                counts[prefix] = max(counts.get(prefix, 0), int(part) + 1)
    return counts


def check_layer_count(cls: type, model_config: Any, attn_implementation: str | None,
                      shapes: Mapping[str, tuple[int, ...]], folder: Path, weights: Path) -> None:
    """Refuse a config.json whose ``num_hidden_layers`` disagrees with the weights, without building its model.

    Building the skeleton is linear in the layers, but a config raised to thousands of layers makes even that
    take long on a busy machine; which block lists grow with ``num_hidden_layers`` is found from two skeletons
    of one and two layers (milliseconds), and only when the claimed count is not a count the weights hold.
    """
    claimed = getattr(model_config, "num_hidden_layers", None)
    saved = _numbered_blocks(shapes)
    if type(claimed) is not int or claimed < 3 or claimed in saved.values():
        return
    counts = []
    try:
        for layers in (1, 2):
            small = copy.deepcopy(model_config)
            small.num_hidden_layers = layers
            counts.append(_numbered_blocks(build_skeleton(cls, small, attn_implementation).state_dict()))
    except (SmashError, AttributeError, TypeError, ValueError):  # a config that ties other fields to the count
        return
    growing = [prefix for prefix, count in counts[1].items() if count == 2 and counts[0].get(prefix) == 1]
    wrong = [f"{prefix} has {claimed} blocks in config.json, {saved[prefix]} in the weights"
             for prefix in growing if prefix in saved and saved[prefix] != claimed]
    if wrong:
        raise SmashedModelLoadError(
            f"{weights} does not fit {folder / 'config.json'}: {_some(wrong, 5)}. config.json was edited or "
            "belongs to another model; save or download the folder again."
        )


def check_header_fits(
    skeleton: torch.nn.Module, shapes: Mapping[str, tuple[int, ...]], owners: Mapping[str, list[str]] | None,
    stateful: bool, folder: Path, weights: Path,
) -> None:
    """Refuse a config.json that disagrees with the weights' header before any algorithm's hook runs.

    What is compared: the length of every numbered block list (a config claiming 3000 layers for 2 saved
    ones is refused in seconds, not after minutes of building quantized layers) and the shape of every
    saved tensor no algorithm restructured. Names only the real load can judge (tensors an algorithm
    creates, extra entries a module consumes itself) are left to it.
    """
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    saved_blocks, built_blocks = _numbered_blocks(shapes), _numbered_blocks(expected)
    problems = [
        f"{path} has {built_blocks[path]} blocks in config.json, {count} in the weights"
        for path, count in saved_blocks.items()
        if path in built_blocks and built_blocks[path] != count
    ]
    if owners is not None or not stateful:
        owned = {name for names in (owners or {}).values() for name in names}
        problems += [
            f"{name} {shape} in the weights, {expected[name]} from config.json"
            for name, shape in shapes.items()
            if name not in owned and name in expected and expected[name] != shape
        ]
    if problems:
        raise SmashedModelLoadError(
            f"{weights} does not fit {folder / 'config.json'}: {_some(problems, 5)}. config.json was edited or "
            "belongs to another model; save or download the folder again."
        )


# ====================================================================== load: the weights
def own_memory(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` in memory torch allocated (64-byte aligned), not a view into a file's buffer."""
    return tensor.clone(memory_format=torch.contiguous_format)


def _read_weights(path: Path, manifest: dict[str, Any], device: str, verify: bool) -> dict[str, torch.Tensor]:
    """The saved tensors, each in memory of its own (aligned as torch allocates it, not a view into the file)."""
    expected = manifest["saved_model"]["weights"]["sha256"]
    if verify and file_sha256(path) != expected:
        raise SmashedModelLoadError(
            f"{path} is corrupt: its checksum differs from the one in {MANIFEST_FILE}. Save or download it again."
        )
    state = {}
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            for name in handle.keys():  # noqa: SIM118 - the handle is not iterable
                tensor = handle.get_tensor(name)
                # on the CPU these are views into the file at whatever offset it gives (24, 40 bytes...), and
                # torch picks other kernels for unaligned data: a loaded fp32 BERT differed by 3.7e-9 from the
                # saved one. A copy is the model's own memory, aligned as torch allocates it.
                state[name] = own_memory(tensor) if device == "cpu" else tensor
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _unreadable(path, str(error)) from None
    return state


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
    for name, loader in (("tokenizer", "AutoTokenizer"), ("processor", "AutoProcessor")):
        if not files.get(name):
            continue
        import transformers

        try:
            component = getattr(transformers, loader).from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as error:  # noqa: BLE001 - odd or missing files: transformers raises many kinds
            raise SmashedModelLoadError(
                f"the {name} files in {folder} cannot be read ({type(error).__name__}: {error}); save or download the "
                f"folder again, or set 'saved_model.files.{name}' to false in {MANIFEST_FILE} to load without it."
            ) from None
        setattr(config.components, name, component)


def _generation_config(model: torch.nn.Module, folder: Path) -> None:
    """The saved generation_config.json when there is one (a folder without it loads with the model's defaults)."""
    if not (folder / "generation_config.json").is_file() or not hasattr(model, "generation_config"):
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - not JSON, wrong fields
        raise SmashedModelLoadError(
            f"{folder / 'generation_config.json'} cannot be read ({type(error).__name__}: {error}); fix or delete it."
        ) from None


def load_smashed_model(
    path_or_repo_id: str | os.PathLike,
    device: str | torch.device | None = None,
    model: torch.nn.Module | None = None,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    verify_checksum: bool = True,
) -> tuple[torch.nn.Module, SmashConfig]:
    """(model, SmashConfig) of a folder written by :func:`save_smashed_model`, or of a Hub repository holding one.

    ``SmashedModel.from_pretrained`` wraps the pair.
    """
    folder = readable_folder(resolve_folder(path_or_repo_id, revision=revision, token=token))
    manifest = read_manifest(folder)
    saved = manifest["saved_model"]
    device = _choose_device(manifest, device)
    checked = _check_algorithms(manifest, folder, device)
    config = _config_of(manifest, folder, device, checked)
    # settings from the config, so a hyperparameter added since the save gets its default
    algorithms = [(algorithm, config.settings_for(algorithm)) for algorithm in checked]
    weights = _weights_path(folder, manifest)
    shapes, metadata = read_header(weights)
    tied = _json_metadata(weights, metadata, TIED_KEY, str) or {}
    owners = _json_metadata(weights, metadata, OWNERS_KEY, list)
    if model is None:
        description = saved["model"]
        cls, model_config = model_class(description, folder, trust_remote_code)
        check_layer_count(cls, model_config, description.get("attn_implementation"), shapes, folder, weights)
        model = build_skeleton(cls, model_config, description.get("attn_implementation"))
    elif not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"model= takes a torch.nn.Module with the smashed model's architecture, not {type(model).__name__}.")
    if saved["model"].get("split_experts"):  # smash() split them before its algorithms ran: so here
        split_experts(model)
    check_header_fits(model, shapes, owners, any(a.saves_state for a in checked), folder, weights)
    # on the meta device, layers an algorithm creates hold no memory until the saved tensors are assigned:
    # allocating them for real (zeros) only to throw them away cost 3 of SmolLM2's 4 s of loading
    with torch.device("meta"):
        for algorithm, settings in algorithms:
            if algorithm.saves_state:
                model = _run_hook(algorithm, "prepare_for_loading", model, settings)
    state = _read_weights(weights, manifest, device, verify_checksum)
    for alias, kept in tied.items():
        if kept not in state:
            raise SmashedModelLoadError(f"{weights} is damaged: '{alias}' is tied to '{kept}', which it does not hold.")
        state[alias] = state[kept]
    _put_weights(model, state, folder, algorithms)
    retie(model, tied)
    model = model.to(device).eval()
    restore_buffer_dtypes(model, saved["model"].get("buffer_dtypes", {}))
    still_empty = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_empty:
        raise SmashedModelLoadError(
            f"after loading, {', '.join(still_empty[:5])} hold no data (meta tensors not in the saved weights): an "
            "algorithm's prepare_for_loading created tensors it does not save; they must be computed in after_loading."
        )
    if saved.get("files", {}).get("generation_config", True):
        _generation_config(model, folder)
    # components first: runtime algorithms applied again below may need them (a batcher's tokenizer)
    _attach_components(config, folder, saved.get("files", {}), trust_remote_code)
    for algorithm, settings in algorithms:
        if algorithm.saves_state:
            model = _run_hook(algorithm, "after_loading", model, settings)
        else:
            model = _run_hook(algorithm, "after_loading", model, settings, components=config.components)
    return model, config
