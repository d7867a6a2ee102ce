"""Training batches from the data attached to a config: the train split, packed into fixed-length windows."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from smashlib.data import calibration_batches

#: Tokens per training sequence by default: long enough for real context, short enough for 2 CPU cores.
SEQUENCE_LENGTH = 256
#: At most this many distinct sequences are tokenized; longer runs cycle through them.
MAX_SEQUENCES = 4096


def fitting_length(model: Any, wanted: int) -> int:
    """``wanted``, or the model's maximum positions when fewer (GPT-2 and BERT have learned position tables)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(wanted, int(limit)) if limit else wanted


def training_batches(
    components: Any, steps: int, batch_size: int, seed: int, sequence_length: int = SEQUENCE_LENGTH
) -> list[dict[str, torch.Tensor]]:
    """Enough batches of ``batch_size`` x ``sequence_length`` tokens for ``steps`` steps, or all the data has
    (the loop then cycles through it: a small text is seen several times)."""
    wanted = min(MAX_SEQUENCES, steps * batch_size)
    with warnings.catch_warnings():  # fewer sequences than steps x batch is expected: the loop cycles
        warnings.filterwarnings("ignore", message="the data holds only")
        return calibration_batches(components, wanted, sequence_length, batch_size=batch_size, seed=seed)
