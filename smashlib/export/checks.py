"""What an exporter can represent: which algorithms' results, so anything else is refused up front."""
from __future__ import annotations

from typing import Any

from torch import nn

from smashlib.errors import UnsupportedExportError

#: Algorithms that leave no trace in the weights (they are re-applied when a smashlib folder loads,
#: and an engine reading an exported file does its own compiling, caching and batching).
RUNTIME_GROUPS = ("cacher", "compiler", "batcher")
#: Algorithms whose result is an ordinary model of the same architecture that config.json describes (fewer
#: heads, channels or layers; zeros in the weights), so an exporter writes it as it writes any model.
STRUCTURAL = ("torch_structured", "depth_distiller", "torch_unstructured")


def unwrap(smashed: Any) -> tuple[nn.Module, list[str]]:
    """(the model, the names of the applied algorithms that changed its weights) of a SmashedModel or a
    plain model (no algorithms)."""
    config = getattr(smashed, "smash_config", None)
    if config is None:
        return smashed, []
    names = [a.name for a in config.chosen_algorithms() if a.group not in RUNTIME_GROUPS]
    return smashed.model, names


def refuse_algorithms(names: list[str], supported: tuple[str, ...], format_name: str, hint: str) -> None:
    unsupported = [name for name in names if name not in supported]
    if unsupported:
        raise UnsupportedExportError(
            f"format={format_name!r} cannot represent what {', '.join(unsupported)} did to the model: it holds "
            f"the results of {', '.join(supported)} only (plus runtime algorithms: {', '.join(RUNTIME_GROUPS)}). "
            f"{hint}"
        )
