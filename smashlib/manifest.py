"""smash_config.json of a saved folder: its one schema, the one place it is read and checked.

A folder may come from anywhere (a download, a colleague, an edit by hand), so every field loading or
saving relies on is checked here against a small declarative schema before anything uses it: a wrong
type, a missing section, a file path that leaves the folder or a missing checksum is reported as a
:class:`SmashedModelLoadError` naming the file, the field, what it must be and what to do, instead
of a ``KeyError`` or ``TypeError`` from deep inside loading. Unknown fields are allowed (a newer
smashlib may add some without changing the format version).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from smashlib.errors import SmashedModelLoadError

#: Version of the saved-folder layout ("saved_model" in smash_config.json). Raise it when a change would
#: make an older smashlib misread a folder; loading a newer one is refused with a clear error.
FORMAT_VERSION = 1
MANIFEST_FILE = "smash_config.json"
WEIGHTS_FILE = "model.safetensors"
#: The library a saved model's class comes from (see smashlib.skeleton).
LIBRARIES = ("transformers", "custom_code", "plain")

_DAMAGED = "The file was edited or damaged: restore the field, or save the model again."


# ====================================================================== the schema's vocabulary
@dataclass(frozen=True)
class Kind:
    """A leaf of the schema: what a value must be, said as a message says it, and the test."""

    expected: str
    accepts: Callable[[Any], bool]
    fix: str = _DAMAGED


@dataclass(frozen=True)
class Section:
    """A JSON object with named fields (other keys are ignored)."""

    fields: Mapping[str, Field]
    expected: str = "an object"


@dataclass(frozen=True)
class ListOf:
    item: Kind | Section
    expected: str = "a list"


@dataclass(frozen=True)
class MapOf:
    """A JSON object whose keys are free (e.g. hyperparameter names) and whose values share one kind."""

    value: Kind | Section
    expected: str = "an object"


@dataclass(frozen=True)
class Field:
    shape: Kind | Section | ListOf | MapOf
    required: bool = True
    nullable: bool = False
    fix: str = field(default="")


def _is_relative_file(value: Any) -> bool:
    """A path that stays inside the folder: relative, no '..', no drive, no empty part."""
    if not isinstance(value, str) or not value or "\x00" in value or "\\" in value:
        return False
    path = PurePosixPath(value)
    if path.is_absolute() or PureWindowsPath(value).drive or value.startswith("~"):
        return False
    return all(part not in ("", ".", "..") for part in value.split("/"))


INTEGER = Kind("an integer", lambda v: type(v) is int and v >= 0)
STRING = Kind("a string", lambda v: isinstance(v, str))
BOOLEAN = Kind("true or false", lambda v: type(v) is bool)
ANY = Kind("any JSON value", lambda v: True)
SCALAR = Kind(
    "a string, number, true/false or null (hyperparameter values are single values, never lists)",
    lambda v: v is None or isinstance(v, (str, bool, int, float)),
)
SHA256 = Kind(
    "the SHA-256 of the weights file (64 hexadecimal digits)",
    lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
    fix="Without it the weights cannot be verified: save the model again (or download the folder again).",
)
RELATIVE_FILE = Kind(
    "a file name inside the folder (relative, without '..')",
    _is_relative_file,
    fix="smashlib reads only files inside the saved folder: the manifest was edited to point elsewhere; "
    "save or download the folder again.",
)
ATTENTION = Kind(
    "one of transformers' built-in attention implementations (e.g. 'sdpa', 'eager'), not a Hub kernel",
    lambda v: isinstance(v, str) and "/" not in v and ":" not in v and bool(v),
    fix="A kernel named by Hub repo would be downloaded and run at load time, which smashlib never does: "
    "set it to 'sdpa' (or 'eager'), or load with model= built as you like.",
)


def _choice(values: tuple[str, ...]) -> Kind:
    return Kind("one of " + ", ".join(repr(v) for v in values), lambda v: v in values)


ALGORITHM_ENTRY = Section({
    "name": Field(STRING),
    "group": Field(STRING),
    "restored": Field(STRING, required=False),
    "settings": Field(MapOf(SCALAR), required=False),
})
SAVED_MODEL = Section({
    "schema_version": Field(INTEGER),
    "versions": Field(MapOf(STRING), required=False),
    "algorithms": Field(ListOf(ALGORITHM_ENTRY)),
    "model": Field(Section({
        "library": Field(_choice(LIBRARIES)),
        "class": Field(STRING),
        "module": Field(STRING, required=False, nullable=True),
        "auto_class": Field(STRING, required=False, nullable=True),
        "attn_implementation": Field(ATTENTION, required=False, nullable=True),
        "dtype": Field(STRING, required=False, nullable=True),
        "source": Field(STRING, required=False, nullable=True),
        "buffer_dtypes": Field(MapOf(STRING), required=False),
        "split_experts": Field(BOOLEAN, required=False),
    })),
    "weights": Field(Section({
        "file": Field(RELATIVE_FILE),
        "bytes": Field(INTEGER),
        "sha256": Field(SHA256, fix=SHA256.fix),
        "tensors": Field(INTEGER, required=False),
    }), fix="Without a weights section nothing says which file holds the weights or lets them be verified: "
        "save the model again."),
    "files": Field(Section({
        name: Field(BOOLEAN, required=False) for name in ("config", "generation_config", "tokenizer", "processor")
    }), required=False),
    "contents": Field(ListOf(RELATIVE_FILE), required=False),
    "report": Field(Section({"json": Field(MapOf(ANY), required=False), "markdown": Field(STRING, required=False)}),
                    required=False),
})
#: The whole of smash_config.json as a saved folder holds it (SmashConfig's JSON plus "saved_model").
MANIFEST = Section({
    "schema_version": Field(INTEGER),
    "smashlib_version": Field(STRING, required=False),
    "device": Field(_choice(("cpu", "cuda")), required=False),
    "values": Field(MapOf(SCALAR)),
    "components": Field(MapOf(ANY), required=False),
    "saved_model": Field(SAVED_MODEL),
})


# ====================================================================== checking against it
def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    names = {int: "an integer", float: "a number with a fraction", str: "a string", list: "a list", dict: "an object"}
    kind = names.get(type(value), type(value).__name__)
    shown = repr(value) if isinstance(value, (int, float, str)) else ""
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} ({shown})" if shown else kind


def _fail(path: Path, where: str, found: str, expected: str, fix: str) -> SmashedModelLoadError:
    return SmashedModelLoadError(f"{path}: field '{where}' is {found}, but must be {expected}. {fix or _DAMAGED}")


def _check(value: Any, shape: Kind | Section | ListOf | MapOf, where: str, path: Path, fix: str) -> None:
    if isinstance(shape, Kind):
        if not shape.accepts(value):
            raise _fail(path, where, _describe(value), shape.expected, fix or shape.fix)
        return
    container = list if isinstance(shape, ListOf) else dict
    if type(value) is not container:
        raise _fail(path, where, _describe(value), shape.expected, fix)
    if isinstance(shape, ListOf):
        for index, item in enumerate(value):
            _check(item, shape.item, f"{where}[{index}]", path, "")
    elif isinstance(shape, MapOf):
        for key, item in value.items():
            _check(item, shape.value, f"{where}.{key}", path, "")
    else:
        check_section(value, shape, path, where)


def check_section(payload: Mapping[str, Any], section: Section, path: Path, where: str = "") -> None:
    """Raise SmashedModelLoadError for the first field of ``payload`` that ``section`` does not allow."""
    for name, spec in section.fields.items():
        dotted = f"{where}.{name}" if where else name
        if name not in payload:
            if spec.required:
                raise _fail(path, dotted, "missing", _expected(spec.shape), spec.fix)
            continue
        value = payload[name]
        if value is None and spec.nullable:
            continue
        _check(value, spec.shape, dotted, path, spec.fix)


def _expected(shape: Kind | Section | ListOf | MapOf) -> str:
    return shape.expected


# ====================================================================== reading
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SmashedModelLoadError(f"{path} is damaged (not valid JSON: {error}); save the model again.") from None
    except RecursionError:
        raise SmashedModelLoadError(f"{path} is damaged (JSON nested too deeply to read); save the model again.") from None
    except OSError as error:
        raise SmashedModelLoadError(f"{path} cannot be read ({error.strerror or error}).") from None


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """smash_config.json of a saved folder, checked against :data:`MANIFEST` and the versions this smashlib reads."""
    from smashlib import __version__, config

    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        hint = " (it holds a config.json: a plain transformers model; load it with transformers)" if (
            folder / "config.json"
        ).is_file() else ""
        raise SmashedModelLoadError(f"{folder} is not a model saved by smashlib: it has no {MANIFEST_FILE}{hint}.")
    manifest = _read_json(path)
    if type(manifest) is not dict:
        raise _fail(path, "(the whole file)", _describe(manifest), "an object", _DAMAGED)
    # the versions first: a newer format may have changed the other fields, and "upgrade" is the useful answer
    check_section(manifest, Section({"schema_version": MANIFEST.fields["schema_version"],
                                     "saved_model": Field(Section({"schema_version": Field(INTEGER)}))}), path)
    saved = manifest["saved_model"]
    by = saved.get("versions", {}).get("smashlib", "?") if isinstance(saved.get("versions"), dict) else "?"
    if saved["schema_version"] > FORMAT_VERSION:
        raise SmashedModelLoadError(
            f"{folder} was saved by smashlib {by} in folder format {saved['schema_version']}; this smashlib "
            f"({__version__}) reads formats up to {FORMAT_VERSION}: upgrade smashlib (pip install -U smashlib)."
        )
    if manifest["schema_version"] > config.SCHEMA_VERSION:
        raise SmashedModelLoadError(
            f"{path} holds a SmashConfig of schema version {manifest['schema_version']} (smashlib {by}); this smashlib "
            f"({__version__}) reads up to {config.SCHEMA_VERSION}: upgrade smashlib (pip install -U smashlib)."
        )
    check_section(manifest, MANIFEST, path)
    return manifest
