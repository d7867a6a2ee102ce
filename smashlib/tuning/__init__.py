"""tune(): the fastest smashed model within a quality bound, searched over the SmashConfig's own space.

SMAC3 (``pip install 'smashlib[tune]'``) proposes recipes from :func:`smashlib.registry.configuration_space`,
restricted to the algorithms that can run here; each trial smashes a fresh copy of the model and is
measured against it with :mod:`smashlib.evaluation` on held-out data. See docs/tune.md.
"""
from __future__ import annotations

from smashlib.tuning.result import TuneResult
from smashlib.tuning.search import tune

__all__ = ["TuneResult", "tune"]
