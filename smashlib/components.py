"""What a SmashConfig carries besides its choices: tokenizer, processor and data.

They are kept apart from the ConfigSpace values because they are objects, not hyperparameters; the
saved config records only their names, never the data.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Components:
    """The objects attached with ``add_tokenizer``, ``add_processor`` and ``add_data``."""

    tokenizer: Any = None
    processor: Any = None
    data: Any = None
    #: name -> a short description (e.g. the Hub id or dataset name and sizes) for the saved config.
    descriptions: dict[str, Any] = field(default_factory=dict)
    #: algorithm name -> what it keeps from the original model during one smash() run (a teacher); never saved.
    kept: dict[str, Any] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return getattr(self, name, None) is not None


def describe_pretrained(obj: Any) -> str:
    """A short name for a tokenizer or processor: its Hub id or path when it has one, else its class."""
    return getattr(obj, "name_or_path", None) or type(obj).__name__


#: What each component is loaded with, and the call that attaches an object instead of a name.
LOADERS: dict[str, tuple[str, str]] = {
    "tokenizer": ("AutoTokenizer", "cfg.add_tokenizer(AutoTokenizer.from_pretrained(...))"),
    "processor": ("AutoProcessor", "cfg.add_processor(AutoProcessor.from_pretrained(...))"),
}
#: What transformers raises on odd files or unreachable ids (a malformed JSON field is a KeyError,
#: TypeError or AttributeError deep inside it): each becomes a ComponentLoadError naming the source.
LOAD_FAILURES = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def load_pretrained(component: str, source: str | os.PathLike, **kwargs: Any) -> Any:
    """A tokenizer or processor from a local folder or a Hub id, or a ComponentLoadError saying what to pass.

    ``trust_remote_code`` defaults to False: a folder's own Python files never run, and transformers
    never stops to ask on stdin.
    """
    import transformers

    from smashlib.errors import ComponentLoadError

    loader_name, object_call = LOADERS[component]
    kwargs.setdefault("trust_remote_code", False)
    text = str(source)
    try:
        return getattr(transformers, loader_name).from_pretrained(text, **kwargs)
    except LOAD_FAILURES as error:
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        folder = Path(text).expanduser()
        if folder.is_dir():
            broken = malformed_json_files(folder)
            culprit = f" {', '.join(broken)}." if broken else ""
            raise ComponentLoadError(
                f"cannot load a {component} from the folder {folder} ({reason}).{culprit} Fix or remove the "
                f"{component} files there (e.g. save a working {component} with .save_pretrained({str(folder)!r})), "
                f"or pass the {component} object: {object_call}."
            ) from error
        if Path(text).is_file():
            raise ComponentLoadError(
                f"{text} is a file: add_{component} takes a folder holding the {component} files, a Hub id, "
                f"or the {component} object: {object_call}."
            ) from error
        invalid = invalid_hub_id(text)
        if invalid:
            raise ComponentLoadError(
                f"{text!r} is neither a local folder nor a valid Hub id ({invalid}): pass a local folder holding "
                f"the {component} files, a Hub id like 'owner/name', or the {component} object: {object_call}."
            ) from error
        if hub_offline():
            raise ComponentLoadError(
                f"{text!r} is not a local folder and the Hugging Face Hub is offline (HF_HUB_OFFLINE is set), so "
                f"the {component} cannot be downloaded: pass a local folder holding its files, or the {component} "
                f"object: {object_call}."
            ) from error
        raise ComponentLoadError(
            f"cannot load a {component} from {text!r}: it is not a local folder, and as a Hub id it failed "
            f"({reason}). Check the id (owner/name), or pass a local folder or the {component} object: {object_call}."
        ) from error


def invalid_hub_id(text: str) -> str | None:
    """Why ``text`` cannot be a Hub repository id (huggingface_hub's own rule), or None when it can."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        return None
    try:
        validate_repo_id(text)
    except HFValidationError as error:
        return " ".join(str(error).split())[:200]
    return None


def hub_offline() -> bool:
    """Whether huggingface_hub is set to offline mode (HF_HUB_OFFLINE, read the way huggingface_hub reads it)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def malformed_json_files(folder: Path) -> list[str]:
    """'name.json is not valid JSON (...)' for each JSON file in ``folder`` that is not a JSON object."""
    problems = []
    for path in sorted(folder.glob("*.json")):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"{path.name} is not valid JSON ({error})")
            continue
        if not isinstance(content, dict):
            problems.append(f"{path.name} holds a JSON {type(content).__name__}, not an object")
    return problems
