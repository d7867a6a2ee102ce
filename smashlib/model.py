"""SmashedModel: the smashed model, its config, and (in smashlib.serialization) how it is saved and loaded."""
from __future__ import annotations

from typing import Any

import torch

from smashlib.config import SmashConfig


class SmashedModel:
    """A smashed model that behaves like the model it wraps.

    Calls, ``generate`` and attribute access go to the wrapped model, so code written for a
    ``transformers`` model keeps working; ``smash_config`` says how it was made.
    """

    def __init__(self, model: torch.nn.Module, smash_config: SmashConfig) -> None:
        # set through __dict__ so that __getattr__ below never sees them missing
        self.__dict__["model"] = model
        self.__dict__["smash_config"] = smash_config

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)

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

    def __repr__(self) -> str:
        model = self.model
        parameters = sum(p.numel() for p in model.parameters())
        return (
            f"SmashedModel({type(model).__name__}, algorithms=[{', '.join(self.algorithms) or 'none'}], "
            f"parameters={parameters:,}, device='{self.smash_config.device}')"
        )
