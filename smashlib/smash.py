"""smash(): check everything that can be checked, then apply the chosen algorithms in group order."""
from __future__ import annotations

from typing import Any

import torch

from smashlib.config import SmashConfig
from smashlib.errors import SmashError, UnsupportedModelError
from smashlib.layers.expert_linears import SplitExperts, split_experts
from smashlib.model import SmashedModel
from smashlib.progress import progress, quiet


def check_before_smashing(model: Any, config: SmashConfig) -> None:
    """Raise the first problem smash() would meet, before anything touches the model."""
    if isinstance(model, SmashedModel):
        raise UnsupportedModelError("this model is already smashed: smash the original model with one SmashConfig.")
    if not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(
            f"smash() takes a torch.nn.Module (a transformers model or your own), not {type(model).__name__}."
        )
    config.check_components()
    for algorithm in config.chosen_algorithms():
        algorithm.validate_environment(config.device)
        algorithm.check_settings(config.settings_for(algorithm), config.device)
        algorithm.check_model(model)
        algorithm.check_targets(model, config.settings_for(algorithm))


def split_experts_for(model: Any, config: SmashConfig) -> SplitExperts:
    """Give each MoE expert its own linear layers when an algorithm works layer by layer (has
    ``target_modules``), so that it reaches the experts, which hold most of a MoE model's weights
    (smashlib.layers.expert_linears); exact, and undone if a check fails. Done before the checks, so that
    ``target_modules`` patterns are checked against the layers the algorithms will see."""
    layer_wise = any(algorithm.has_target_modules() for algorithm in config.chosen_algorithms())
    if not layer_wise or not isinstance(model, torch.nn.Module) or isinstance(model, SmashedModel):
        return SplitExperts()
    return split_experts(model)


def smash(model: torch.nn.Module, config: SmashConfig, verbose: bool = True, report: bool = False) -> SmashedModel:
    """Apply ``config``'s algorithms to ``model`` and return it wrapped in a :class:`SmashedModel`.

    The model is modified in place (copy it first to keep the original). Everything that can be
    checked is checked before the first algorithm runs, so a bad config leaves the model untouched.
    ``report=True`` keeps a copy of the original, compares it with the result on the config's attached
    data and prints the table (also kept as ``smashed.report``; see smashlib.evaluation).
    """
    experts = split_experts_for(model, config)
    try:
        check_before_smashing(model, config)
    except BaseException:
        experts.restore()  # a bad config leaves the model as it was
        raise
    first = next(iter(model.parameters()), None)
    if first is not None and first.device.type != config.device:
        model = model.to(config.device)
    if report:
        from smashlib.evaluation.smash_report import keep_original

        original = keep_original(model)
    applied: list[str] = []
    steps = config.chosen_algorithms()
    config.components.kept.clear()  # left over from a run that failed
    for algorithm in steps:  # all checks passed: the model is still the original here
        algorithm.prepare_run(model, config.settings_for(algorithm), config.components)
    for algorithm in progress(steps, desc="smashing", disable=not verbose or not steps):
        try:
            with quiet(not verbose):
                model = algorithm.apply(model, config.settings_for(algorithm), config.components)
        except SmashError:
            raise
        except Exception as error:
            before = f"after {', '.join(applied)} was applied" if applied else "as the first algorithm"
            raise SmashError(
                f"{algorithm.name} failed {before} (the model may be partly modified: load it again before "
                f"retrying): {type(error).__name__}: {error}"
            ) from error
        applied.append(algorithm.name)
    config.components.kept.clear()  # a teacher copy must not outlive the run
    smashed = SmashedModel(model, config)
    if report:
        from smashlib.evaluation.smash_report import report_after_smash

        report_after_smash(original, smashed, verbose=verbose)  # compare() keeps it as smashed.report
    return smashed
