"""Calibration recipes the quantizers share: how long their sequences are, their data checks, SmoothQuant.

The one place for calibration lengths (each measured where it is used; see the algorithms' docs):

=========================  ======  ====================================================================
``ACTIVATION_SEQ_LEN``     512     static activation ranges (quanto qint8, torchao int8dq + SmoothQuant)
``SMOOTHQUANT_SEQ_LEN``    256     torch_dynamic's SmoothQuant: ranges settle within a few thousand tokens
``SMOOTHQUANT_BATCH``      4       sequences per batch for it
``GPTQ_TOKENS_PER_BATCH``  4096    gptq: keeps matmuls efficient while a block's activations stay small
=========================  ======  ====================================================================

Quantized activations need ranges seen on real inputs (static scales, or SmoothQuant's per-channel
factors), so those recipes need the attached data and tokenizer, while their weight-only recipes need
nothing. So these algorithms override ``Algorithm.required_components(settings)`` (which smash() checks
before anything runs), and check again here before the model is touched. The batches come from
:func:`smashlib.data.calibration_batches`; the smoothing is :func:`smashlib.smoothquant.smooth`.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from smashlib.algorithm import COMPONENT_FIXES, COMPONENT_NAMES
from smashlib.errors import MissingComponentError

#: Tokens per calibration sequence for static activation ranges (fewer when the model's positions end sooner).
ACTIVATION_SEQ_LEN = 512
#: torch_dynamic's SmoothQuant: tokens per sequence (activation ranges settle within a few thousand tokens)
#: and sequences per batch.
SMOOTHQUANT_SEQ_LEN = 256
SMOOTHQUANT_BATCH = 4
#: gptq: tokens per calibration batch: enough to keep the matmuls efficient, few enough that a block's
#: activations (attention scores grow with the square of the length) stay small.
GPTQ_TOKENS_PER_BATCH = 4096
#: The name this module's first constant had.
CALIBRATION_SEQ_LEN = ACTIVATION_SEQ_LEN


def check_components(algorithm: str, needed: tuple[str, ...], components: Any, why: str) -> None:
    """Raise MissingComponentError naming the add_* call when ``components`` lacks one of ``needed``."""
    for component in needed:
        if not components.has(component):
            example = "the model's tokenizer" if component == "tokenizer" else "e.g. 'PydocTopics', real English text"
            raise MissingComponentError(
                f"'{algorithm}' with {why} needs {COMPONENT_NAMES[component]} for calibration: call "
                f"{COMPONENT_FIXES[component]} ({example}) before smash(), or choose a weight-only setting."
            )


def max_positions(model: nn.Module) -> int:
    """The longest sequence the model's position embeddings cover (ACTIVATION_SEQ_LEN when it says nothing)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_target_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return ACTIVATION_SEQ_LEN


def calibration_inputs(model: nn.Module, components: Any, n_samples: int) -> list[dict]:
    """``n_samples`` packed text sequences from the attached data, on the model's device."""
    from smashlib.data import calibration_batches

    seq_len = min(ACTIVATION_SEQ_LEN, max_positions(model))
    device = next(model.parameters()).device
    return [
        {key: value.to(device) for key, value in batch.items()}
        for batch in calibration_batches(components, n_samples=n_samples, seq_len=seq_len)
    ]


def smooth_before_quantizing(model: nn.Module, batches: list[dict], names: list[str], alpha: float) -> int:
    """SmoothQuant the Linears about to be quantized; returns how many folds were applied."""
    from smashlib.smoothquant import smooth

    return len(smooth(model, batches, alpha=alpha, only=names))
