"""SmashedModel: the smashed model and the config it was made with; saving and loading are in smashlib.serialization."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from smashlib.config import SmashConfig
from smashlib.errors import SmashConfigError
from smashlib.serving.attach import batcher_of


class AppliedSmashConfig(SmashConfig):
    """The read-only copy of a SmashConfig that a SmashedModel keeps: what was applied, whatever happens to the
    config the user goes on editing (a shared config once made a saved folder claim an algorithm never applied)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise SmashConfigError(
            "a SmashedModel's smash_config records what was applied and cannot change: make a new config with "
            "SmashConfig(smashed.smash_config.to_dict()) and smash the original model with it."
        )

    __setitem__ = __delitem__ = update = _refuse


def applied_copy(config: SmashConfig) -> AppliedSmashConfig:
    """A frozen copy of ``config``: its own values, its own components record (the objects themselves are shared:
    a tokenizer or a data module is not copied)."""
    if isinstance(config, AppliedSmashConfig):
        return config
    frozen = copy.copy(config)  # no validation rerun: the values were checked when set
    frozen.__dict__.update({name: copy.copy(value) for name, value in vars(config).items() if isinstance(value, dict)})
    frozen.components = copy.copy(config.components)
    frozen.components.descriptions = dict(config.components.descriptions)
    frozen.__class__ = AppliedSmashConfig
    return frozen


class SmashedModel:
    """A smashed model that behaves like the model it wraps.

    Calls, ``generate`` and attribute access go to the wrapped model, so code written for a
    ``transformers`` model keeps working; ``smash_config`` says how it was made.
    """

    #: An evaluation report (set by the evaluation API); push_to_hub puts its figures in the model card.
    report: Any = None

    def __init__(self, model: torch.nn.Module, smash_config: SmashConfig) -> None:
        # set through __dict__ so that __getattr__ below never sees them missing
        self.__dict__["model"] = model
        self.__dict__["smash_config"] = applied_copy(smash_config)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        batcher = batcher_of(self.model)  # a batcher group algorithm collects calls into batches
        return (batcher.forward if batcher is not None else self.model)(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        batcher = batcher_of(self.model)
        return (batcher.generate if batcher is not None else self.model.generate)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: forward to the wrapped model
        return getattr(self.__dict__["model"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__ or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            setattr(self.model, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.model)))

    @property
    def algorithms(self) -> list[str]:
        """Names of the applied algorithms, in the order they were applied."""
        return [algorithm.name for algorithm in self.smash_config.chosen_algorithms()]

    # ------------------------------------------------------------------ saving (smashlib.serialization, smashlib.hub)
    def save_pretrained(self, save_directory: str | os.PathLike, format: str = "smashlib", **options: Any) -> Path:
        """Write weights (compressed as they are), configs, tokenizer and smash_config.json, atomically.

        ``format="compressed-tensors"`` or ``"gguf"`` writes what other engines read instead
        (transformers/vLLM, llama.cpp; see smashlib.export and docs/export.md).
        """
        if format != "smashlib":
            from smashlib.export import export

            return export(self, save_directory, format, **options)
        from smashlib.serialization import save_smashed_model

        return save_smashed_model(self.model, self.smash_config, save_directory, report=self.report)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        device: str | torch.device | None = None,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> SmashedModel:
        """Load a saved smashed model from a folder or a Hub repo id, without calibration or re-smashing.

        ``model=``: a model of the same architecture to load into (needed for plain torch modules).
        Keywords: ``trust_remote_code``, ``revision``, ``token``, ``verify_checksum`` (see
        :func:`smashlib.serialization.load_smashed_model`).
        """
        from smashlib.serialization import load_smashed_model

        return cls(*load_smashed_model(path_or_repo_id, device=device, model=model, **kwargs))

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        token: str | bool | None = None,
        commit_message: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Upload the saved folder plus a generated model card to the Hub; returns the commit URL."""
        from smashlib.hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message, **kwargs)

    def __repr__(self) -> str:
        model = self.model
        parameters = sum(p.numel() for p in model.parameters())
        return (
            f"SmashedModel({type(model).__name__}, algorithms=[{', '.join(self.algorithms) or 'none'}], "
            f"parameters={parameters:,}, device='{self.smash_config.device}')"
        )

    def _repr_html_(self) -> str:
        """A table for notebooks: the model, each applied algorithm with its settings, and the report when attached."""
        from smashlib.evaluation.formatting import html_table

        model = self.model
        parameters = sum(p.numel() for p in model.parameters())
        size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        rows = [
            [str(step), algorithm.group, algorithm.name,
             ", ".join(f"{k}={v!r}" for k, v in self.smash_config.settings_for(algorithm).items()) or "-"]
            for step, algorithm in enumerate(self.smash_config.chosen_algorithms(), start=1)
        ] or [["-", "-", "none", "-"]]
        caption = (
            f"SmashedModel: {type(model).__name__}, {parameters:,} parameters, "
            f"{size / 1e6:.1f} MB in memory, device '{self.smash_config.device}'"
        )
        table = html_table(["step", "group", "algorithm", "settings"], rows, right_from=4, caption=caption)
        report = getattr(self.report, "_repr_html_", None)
        return table + (report() if callable(report) else "")
