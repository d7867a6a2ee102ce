"""SmashConfig: which algorithms to apply, with which hyperparameters, and the components they need.

A dictionary-style front for one ConfigSpace ``ConfigurationSpace`` (see :mod:`smashlib.registry`):
groups are categoricals, hyperparameters are ``<algorithm>_<name>`` and active only while their
algorithm is chosen, incompatible pairs are forbidden clauses. Every assignment is checked at once,
so a mistake is reported where it is made, not halfway through ``smash()``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from html import escape
from pathlib import Path
from typing import Any

from ConfigSpace import Configuration, ConfigurationSpace

from smashlib import hyperparameters, registry
from smashlib.algorithm import COMPONENT_FIXES, COMPONENT_NAMES, GROUP_ORDER, Algorithm
from smashlib.components import Components, describe_pretrained, load_pretrained
from smashlib.errors import (
    InactiveHyperparameterError,
    IncompatibleAlgorithmsError,
    SmashConfigError,
    UnknownNameError,
    did_you_mean,
)
from smashlib.targets import is_target_modules_hyperparameter, normalize_target_value

#: Version of the JSON layout written by save_json; loading a newer one is refused with a clear error.
#: 1: the first layout. 2: hyperparameters renamed (keep_full_precision, keep_output_head and gptq's
#: output_head became target_modules); version-1 values pass through Algorithm.upgrade_settings when read.
#: 3: gptq_decode_kernel (folders saved before it keep PyTorch's weight-only kernel, so they give the outputs
#: they gave). 4: gptq_decode_kernel="auto" covers smashlib's 4-bit kernel too (folders saved before it say
#: "int8_only": their 2-4-bit layers keep PyTorch's int4 kernel).
SCHEMA_VERSION = 5
DEVICES = ("cpu", "cuda")


def plain(value: Any) -> Any:
    """ConfigSpace hands back numpy scalars; users and JSON want Python's own types."""
    return hyperparameters.python_value(value)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: Any) -> str | None:
    """'cpu' or 'cuda' from a string or a ``torch.device`` (read by its ``type``, so torch is not imported)."""
    if device is None:
        return None
    name = getattr(device, "type", device)
    if not isinstance(name, str) or name not in DEVICES:
        raise SmashConfigError(f"unknown device {device!r}: use one of {', '.join(DEVICES)} (or a torch.device of one).")
    return name


def _field(payload: Mapping[str, Any], name: str, expected: type, missing: Any) -> Any:
    value = payload.get(name, missing)
    if value is not missing and not isinstance(value, expected):
        wanted = {Mapping: "a JSON object", str: "a string"}[expected]
        raise SmashConfigError(
            f"the field '{name}' of the saved SmashConfig is malformed: it must be {wanted}, not "
            f"{type(value).__name__} ({value!r:.60}). Save the config again."
        )
    return value


def upgrade_values(values: Mapping[str, Any], schema_version: int) -> dict[str, Any]:
    """Values saved under ``schema_version`` with each chosen algorithm's settings passed through its
    ``upgrade_settings`` hook (unprefixed in, unprefixed out), so renamed hyperparameters map to today's."""
    upgraded = {key: value for key, value in values.items() if key in GROUP_ORDER}
    chosen = []
    for name in upgraded.values():
        if isinstance(name, str) and name in registry.algorithms():  # an unknown one SmashConfig reports by name
            chosen.append(registry.get_algorithm(name))
    # the longest name first, so 'torch_dynamic_x' belongs to torch_dynamic even if 'torch' existed
    chosen.sort(key=lambda algorithm: -len(algorithm.name))
    settings: dict[str, dict[str, Any]] = {algorithm.name: {} for algorithm in chosen}
    for key, value in values.items():
        if key in GROUP_ORDER:
            continue
        owner = next((a for a in chosen if key.startswith(a.name + "_")), None)
        if owner is None:
            upgraded[key] = value  # belongs to no chosen algorithm: SmashConfig reports it by name
            continue
        settings[owner.name][key.removeprefix(owner.name + "_")] = value
    for algorithm in chosen:
        new = algorithm.upgrade_settings(dict(settings[algorithm.name]), schema_version)
        if schema_version < 5 and algorithm.group == "quantizer" and algorithm.has_target_modules():
            new["target_modules"] = with_kept_in_float(new.get("target_modules", registry.default_settings(algorithm)["target_modules"]))
        upgraded.update({f"{algorithm.name}_{key}": value for key, value in new.items()})
    return upgraded


def with_kept_in_float(value: Any) -> dict[str, list[str]]:
    """Schema 5 made quantizers leave out the layers a model keeps in float (smashlib.targets.kept_in_float);
    a config saved before selected them like any other: the same selection, written out."""
    from smashlib.targets import KEPT_IN_FLOAT, TargetModules

    targets = TargetModules.parse(value)
    include = list(targets.include) + ([KEPT_IN_FLOAT] if KEPT_IN_FLOAT not in targets.include else [])
    return {"include": include, "exclude": list(targets.exclude)}


class SmashConfig(Mapping):
    """Choices of algorithms and their hyperparameters, plus the tokenizer, processor and data they need.

    >>> cfg = SmashConfig({"quantizer": "half"})
    >>> cfg["half_dtype"] = "float16"
    >>> cfg["quantizer"], cfg["half_dtype"]
    ('half', 'float16')
    """

    def __init__(self, values: Mapping[str, Any] | None = None, device: str | Any | None = None) -> None:
        self.device: str = device_name(device) or default_device()
        self.components = Components()
        self._values: dict[str, Any] = {}
        self._assign_all(values or {})

    # ------------------------------------------------------------------ the space
    @staticmethod
    def space() -> ConfigurationSpace:
        """The ConfigSpace space behind every SmashConfig (shared, do not modify)."""
        return registry.configuration_space()

    def configuration(self) -> Configuration:
        """These values as a validated ConfigSpace ``Configuration``."""
        space = self.space()
        values = {group: None for group in GROUP_ORDER}
        values.update(self._values)
        custom = [key for key, value in values.items() if isinstance(value, dict)]
        if custom:
            raise SmashConfigError(
                f"{custom[0]} holds custom patterns, which a ConfigSpace Configuration cannot hold: "
                "set it to one of its presets to get a Configuration."
            )
        return Configuration(space, values=values)

    @classmethod
    def from_configuration(cls, configuration: Configuration, device: str | None = None) -> SmashConfig:
        """A SmashConfig from a Configuration sampled from :meth:`space` (for search methods)."""
        return cls({k: v for k, v in dict(configuration).items() if plain(v) is not None}, device=device)

    # ------------------------------------------------------------------ dictionary access
    def __setitem__(self, key: str, value: Any) -> None:
        if key in GROUP_ORDER:
            self._set_group(key, value)
        elif key in self.space():
            self._set_hyperparameter(key, value)
        else:
            known = [*GROUP_ORDER, *self.space().keys()]
            raise UnknownNameError(
                f"unknown configuration key '{key}'.{did_you_mean(key, known)} Groups: {', '.join(GROUP_ORDER)}; "
                "hyperparameters are named <algorithm>_<name> (see smashlib.algorithms_table())."
            )

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        if key in GROUP_ORDER:
            return None
        if key in self.space():
            owner = self._owner_of(key)
            raise InactiveHyperparameterError(
                f"'{key}' is inactive: it belongs to '{owner.name}', which is not the chosen {owner.group}. "
                f"Set cfg['{owner.group}'] = '{owner.name}' first."
            )
        raise UnknownNameError(f"unknown configuration key '{key}'.{did_you_mean(key, [*GROUP_ORDER, *self.space()])}")

    def __delitem__(self, key: str) -> None:
        if key not in GROUP_ORDER:
            raise SmashConfigError(f"only groups can be removed (cfg['{key}'] cannot); set a group to None instead.")
        self._set_group(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SmashConfig):
            return NotImplemented
        return self._values == other._values and self.device == other.device

    def to_dict(self) -> dict[str, Any]:
        """The active keys and values as plain Python (groups with no algorithm are left out)."""
        return dict(self._values)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several keys at once: all of them, or (when one is refused) none of them."""
        before = dict(self._values)
        try:
            self._assign_all(values)
        except BaseException:
            self._values = before
            raise

    def _assign_all(self, values: Mapping[str, Any]) -> None:
        if not isinstance(values, Mapping):
            raise SmashConfigError(
                f"SmashConfig takes a dict of keys and values, not {type(values).__name__}: e.g. {{'quantizer': 'half'}}."
            )
        # groups first, so that hyperparameters given in the same dict find their algorithm active
        for key in sorted(values, key=lambda k: k not in GROUP_ORDER):
            self[key] = values[key]

    # ------------------------------------------------------------------ what smash() reads
    def chosen_algorithms(self) -> list[Algorithm]:
        """The chosen algorithms, in the order smash() applies them."""
        return [registry.get_algorithm(self._values[g]) for g in GROUP_ORDER if g in self._values]

    def settings_for(self, algorithm: Algorithm | str) -> dict[str, Any]:
        """The algorithm's hyperparameters without their prefix, e.g. {'dtype': 'bfloat16'}."""
        name = algorithm if isinstance(algorithm, str) else algorithm.name
        algorithm = registry.get_algorithm(name)
        return {hp.name: self._values[f"{name}_{hp.name}"] for hp in algorithm.hyperparameters}

    # ------------------------------------------------------------------ components
    def add_tokenizer(self, tokenizer: Any, **kwargs: Any) -> None:
        """Attach a tokenizer: an object, or a local folder / Hub id loaded with AutoTokenizer
        (``trust_remote_code`` defaults to False; a failure is a ComponentLoadError saying what to pass)."""
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_pretrained("tokenizer", tokenizer, **kwargs)
        self.components.tokenizer = tokenizer
        self.components.descriptions["tokenizer"] = describe_pretrained(tokenizer)

    def add_processor(self, processor: Any, **kwargs: Any) -> None:
        """Attach a processor: an object, or a local folder / Hub id loaded with AutoProcessor
        (``trust_remote_code`` defaults to False; a failure is a ComponentLoadError saying what to pass)."""
        if isinstance(processor, (str, os.PathLike)):
            processor = load_pretrained("processor", processor, **kwargs)
        self.components.processor = processor
        self.components.descriptions["processor"] = describe_pretrained(processor)

    def add_data(self, data: Any, **kwargs: Any) -> None:
        """Attach calibration/evaluation data (see :mod:`smashlib.data` for the accepted forms)."""
        from smashlib.data import attach_data

        self.components.data, self.components.descriptions["data"] = attach_data(self, data, **kwargs)

    #: The seed guide's name for :meth:`add_data` (``cfg.add_dataset("WikiText")``): the same call.
    add_dataset = add_data

    def missing_components(self) -> list[tuple[Algorithm, str]]:
        """(algorithm, component) pairs that smash() would refuse."""
        return [
            (algorithm, component)
            for algorithm in self.chosen_algorithms()
            for component in algorithm.required_components(self.settings_for(algorithm))
            if not self.components.has(component)
        ]

    def check_components(self) -> None:
        from smashlib.errors import MissingComponentError

        missing = self.missing_components()
        if missing:
            algorithm, component = missing[0]
            raise MissingComponentError(
                f"'{algorithm.name}' needs {COMPONENT_NAMES[component]}: call {COMPONENT_FIXES[component]} before smash()."
            )

    # ------------------------------------------------------------------ JSON
    def to_json_dict(self) -> dict[str, Any]:
        from smashlib import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "smashlib_version": __version__,
            "device": self.device,
            "values": self.to_dict(),
            "components": dict(self.components.descriptions),
        }

    def save_json(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json_dict(), handle, indent=2)
            handle.write("\n")

    @classmethod
    def from_json_dict(cls, payload: Mapping[str, Any], device: str | None = None) -> SmashConfig:
        """A SmashConfig from what :meth:`to_json_dict` wrote, by this or an older smashlib.

        Settings written under an older schema are passed through each algorithm's
        ``Algorithm.upgrade_settings`` here, the one place every reader (``load_json``, loading a saved
        model) goes through, so renamed hyperparameters still load.
        """
        if not isinstance(payload, Mapping):
            raise SmashConfigError(f"a saved SmashConfig is a JSON object, not {type(payload).__name__}.")
        version = payload.get("schema_version")
        written_by = f"(by smashlib {payload.get('smashlib_version', '?')})"
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SmashConfigError(
                f"the field 'schema_version' is malformed: {version!r} {written_by}; it must be a whole number "
                f"from 1 to {SCHEMA_VERSION}. The file was edited or damaged: save the config again."
            )
        if version > SCHEMA_VERSION:
            raise SmashConfigError(
                f"this SmashConfig was written with schema version {version} {written_by}; this smashlib reads up "
                f"to {SCHEMA_VERSION}: upgrade smashlib."
            )
        values = _field(payload, "values", Mapping, {})
        components = _field(payload, "components", Mapping, {})
        saved_device = _field(payload, "device", str, None)
        if version < SCHEMA_VERSION:
            values = upgrade_values(values, version)
        config = cls(values, device=device or saved_device)
        config.components.descriptions.update(components)
        return config

    @classmethod
    def load_json(cls, path: str | os.PathLike, device: str | None = None) -> SmashConfig:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise SmashConfigError(f"cannot read the SmashConfig file {path}: {error.strerror or error}.") from None
        except UnicodeDecodeError as error:
            raise SmashConfigError(f"{path} is not a SmashConfig JSON file (not UTF-8 text: {error}).") from None
        try:
            payload = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise SmashConfigError(f"{path} is not valid JSON: {error}") from None
        return cls.from_json_dict(payload, device=device)

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        lines = [f"SmashConfig(device='{self.device}')"]
        for algorithm in self.chosen_algorithms():
            lines.append(f"  {algorithm.group:<10} {algorithm.name}")
            for key, value in self.settings_for(algorithm).items():
                lines.append(f"    {algorithm.name}_{key} = {value!r}")
        if len(lines) == 1:
            lines.append("  (no algorithm chosen)")
        for name, description in self.components.descriptions.items():
            lines.append(f"  + {name}: {description}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The same content as repr(), as a table for notebooks."""
        rows = []
        for algorithm in self.chosen_algorithms():
            settings = self.settings_for(algorithm)
            text = ", ".join(f"{algorithm.name}_{key}={value!r}" for key, value in settings.items()) or "-"
            rows.append((algorithm.group, algorithm.name, text))
        body = "".join(
            f"<tr><td>{escape(group)}</td><td><code>{escape(name)}</code></td><td>{escape(text)}</td></tr>"
            for group, name, text in rows
        ) or '<tr><td colspan="3">(no algorithm chosen)</td></tr>'
        attached = "".join(
            f"<li>{escape(name)}: {escape(str(description))}</li>" for name, description in self.components.descriptions.items()
        )
        return (
            f"<div><strong>SmashConfig</strong> (device <code>{escape(self.device)}</code>)"
            "<table><thead><tr><th>group</th><th>algorithm</th><th>hyperparameters</th></tr></thead>"
            f"<tbody>{body}</tbody></table>" + (f"<p>attached:</p><ul>{attached}</ul>" if attached else "") + "</div>"
        )

    # ------------------------------------------------------------------ internals
    def _set_group(self, group: str, name: Any) -> None:
        name = plain(name)
        if name is None or name == "None":
            self._drop_group(group)
            return
        try:
            algorithm = registry.get_algorithm(name)
        except UnknownNameError:
            choices = registry.algorithms_in_group(group)
            raise UnknownNameError(
                f"unknown {group} '{name}'.{did_you_mean(name, choices)} "
                f"Choices for '{group}': {', '.join(choices) or '(none installed)'}, or None."
            ) from None
        if algorithm.group != group:
            raise SmashConfigError(f"'{name}' is a {algorithm.group}, not a {group}: set cfg['{algorithm.group}'] = '{name}'.")
        algorithm.validate_environment(self.device, check_hardware=False)
        for other_group, other_name in self._values.items():
            if other_group in GROUP_ORDER and other_group != group and registry.incompatible_pair(name, other_name):
                raise IncompatibleAlgorithmsError(
                    f"{group} '{name}' cannot be combined with {other_group} '{other_name}'. "
                    f"Set cfg['{other_group}'] = None first, or choose another {group}."
                )
        self._drop_group(group)
        self._values[group] = name
        for hyperparameter in algorithm.hyperparameters:
            self._values[f"{name}_{hyperparameter.name}"] = plain(hyperparameter.default_value)

    def _drop_group(self, group: str) -> None:
        previous = self._values.pop(group, None)
        if previous is not None:
            for hyperparameter in registry.get_algorithm(previous).hyperparameters:
                self._values.pop(f"{previous}_{hyperparameter.name}", None)

    def _owner_of(self, key: str) -> Algorithm:
        for algorithm in registry.algorithms().values():
            if key.startswith(algorithm.name + "_") and any(
                key == f"{algorithm.name}_{hp.name}" for hp in algorithm.hyperparameters
            ):
                return algorithm
        raise UnknownNameError(f"no algorithm owns '{key}'")  # unreachable for keys of the space

    def _set_hyperparameter(self, key: str, value: Any) -> None:
        owner = self._owner_of(key)
        if self._values.get(owner.group) != owner.name:
            raise InactiveHyperparameterError(
                f"'{key}' is inactive: it belongs to '{owner.name}', which is not the chosen {owner.group}. "
                f"Set cfg['{owner.group}'] = '{owner.name}' first."
            )
        hyperparameter = self.space()[key]
        if is_target_modules_hyperparameter(hyperparameter):  # a preset, or custom include/exclude patterns
            self._values[key] = normalize_target_value(value, key)
            return
        self._values[key] = hyperparameters.checked_value(key, hyperparameter, value)
