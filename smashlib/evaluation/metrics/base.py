"""The Metric interface: what a metric declares, and the three calls the runner makes.

A metric is a small class. The runner (:func:`smashlib.evaluation.compare.run_metrics`) decides the order of calls so
that every metric gets the same fairness for free: timed metrics are measured in interleaved rounds
(base, smashed, smashed, base, ...), so a machine that slows down during the run slows both models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from smashlib.evaluation.inputs import EvalInputs


@dataclass(frozen=True)
class Quantity:
    """One number a metric produces: its key in the report, how to show it, and which way is better."""

    key: str
    label: str
    unit: str
    #: True when smaller is better (latency, size), False when larger is (tokens/s), None when neither.
    lower_is_better: bool | None


class Metric:
    """Base class of every metric; subclasses are registered with :func:`register_metric`.

    ``measure`` is called ``rounds`` times per model, interleaved with the other models, after one call
    of ``warm_up`` per model; ``summarize`` turns the list of samples into the values of ``quantities``.
    Paired metrics (agreement with the base model) implement ``measure_pair`` instead.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    quantities: ClassVar[tuple[Quantity, ...]] = ()
    #: Compares a model's outputs with the reference model's instead of measuring one model alone.
    paired: ClassVar[bool] = False

    @property
    def rounds(self) -> int:
        """How many interleaved measurements each model gets (1 for metrics that are not timed)."""
        return 1

    def skip_reason(self, model: torch.nn.Module, inputs: EvalInputs) -> str | None:
        """Why this metric does not apply to ``model`` with ``inputs`` (None when it does)."""
        return None

    def warm_up(self, model: torch.nn.Module, inputs: EvalInputs) -> None:
        """Run whatever must happen once before measuring (lazy kernels, compilation, caches)."""

    def measure(self, model: torch.nn.Module, inputs: EvalInputs) -> Any:
        """One sample (a round) for ``model``."""
        raise NotImplementedError

    def summarize(self, samples: list[Any], inputs: EvalInputs) -> dict[str, float | None]:
        """The metric's values from all of one model's samples, keyed like ``quantities``."""
        raise NotImplementedError

    def measure_pair(
        self, reference: torch.nn.Module, model: torch.nn.Module, inputs: EvalInputs
    ) -> dict[str, float | None]:
        """Paired metrics only: values for ``model`` measured against ``reference``."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The metric's own parameters, written into the report so a number says how it was taken."""
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({arguments})"
