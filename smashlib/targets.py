"""Which layers an algorithm touches: the one ``target_modules`` setting, its presets and its resolution.

Every algorithm that works layer by layer (quantizers, pruners, LoRA recovery) declares one
hyperparameter made by :func:`target_modules_hyperparameter`, so users meet one vocabulary everywhere:
``cfg["<algorithm>_target_modules"]``. Its value is one of

- a **preset name** (a ConfigSpace categorical value, so search methods can sample it):

  ============================================  =====================================================
  ``"all_linear"``                              every layer the algorithm can take
  ``"all_but_output_head"``                     all but the output head (``lm_head``, ``proj_out``...)
  ``"all_but_outlier_layers"``                  all but the layers whose *inputs* carry activation
                                                outliers (MLP down projections: ``down_proj``, ``fc2``...)
  ``"all_but_outlier_layers_and_output_head"``  both exclusions
  ============================================  =====================================================

- or **custom patterns**, ``{"include": [...], "exclude": [...]}`` (either key may be left out;
  ``include`` defaults to ``["*"]``), or a :class:`TargetModules`. SmashConfig accepts these for a
  target-modules hyperparameter only and saves them as that dict in ``smash_config.json``.

A pattern is matched against a layer's full dotted name (``model.layers.0.mlp.down_proj``):

- a glob (``fnmatch``, case-sensitive; ``*`` also crosses dots). A pattern matches the whole name or a
  dotted suffix of it, as PEFT's ``target_modules`` does: ``"down_proj"`` matches every down projection,
  ``"model.layers.0.*"`` the first block;
- ``"re:<regex>"``: a regular expression searched in the name;
- ``"@output_head"`` / ``"@outlier_layers"``: the named groups the presets are made of;
- ``"@kept_in_float"``: the layers the model keeps in float (:func:`kept_in_float`), which quantizers leave
  out unless an include pattern is this one.

A layer is targeted when it is a layer the algorithm can take (``accept``, by default :func:`is_linear`),
matches an include pattern and matches no exclude pattern. An include pattern that matches no such
layer is an error (:func:`check_targets`), so a typo never silently quantizes nothing.

Public API (stable; other algorithms build on it)::

    PRESETS, PRESET_NAMES, OUTLIER_LAYERS
    TargetModules(include=("*",), exclude=())      .parse(value, key) / .to_json() / .resolve(model, accept)
    target_modules_hyperparameter(default)         -> ConfigSpace Categorical named "target_modules"
    is_target_modules_hyperparameter(hp)           -> bool (the hook SmashConfig uses)
    normalize_target_value(value, key)             -> preset str or {"include": [...], "exclude": [...]}
    resolve_targets(model, value, accept=is_linear) -> list of module names, in model order
    check_targets(model, value, accept, algorithm) -> raises before anything is modified
    is_linear(module), is_nn_linear(module), as_plain_linears(model, names), PLAIN_LINEAR_SUBCLASSES
    output_head_names(model), tied_embeddings(model, names)
    kept_in_float(model), KEPT_IN_FLOAT            -> layers quantizers leave in float unless included by name
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from smashlib.errors import HyperparameterValueError, UnsupportedModelError

if TYPE_CHECKING:
    from torch import nn

#: Linears reading activations with outlier channels: the MLP down projections (Llama's down_proj,
#: OPT/Whisper's fc2, T5's wo, BERT's FFN output.dense, GPT-2's mlp.c_proj, GPT-NeoX/Falcon's dense_4h_to_h,
#: and a MoE expert's down projection, ``experts.down_proj.<expert>`` once smashlib.layers.expert_linears split it).
OUTLIER_LAYERS = (
    r"(^|\.)(down_proj|fc2|wo|dense_4h_to_h)$|(^|\.)experts\.down_proj\.\d+$|(^|\.)mlp\.c_proj$"
    r"|(^|\.)layer\.\d+\.output\.dense$"
)

#: Named groups usable as patterns; each is resolved against the model, not against the name alone.
NAMED_GROUPS = ("@output_head", "@outlier_layers", "@kept_in_float")
#: The include pattern that lets a quantizer take the layers the model keeps in float (:func:`kept_in_float`).
KEPT_IN_FLOAT = "@kept_in_float"

#: Key under which a hyperparameter's ConfigSpace ``meta`` marks it as a target-modules setting.
META_KIND = "smashlib_kind"
KIND = "target_modules"
HYPERPARAMETER_NAME = "target_modules"


@dataclass(frozen=True)
class TargetModules:
    """Include / exclude patterns naming the layers an algorithm touches (see the module docstring)."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Any, key: str = HYPERPARAMETER_NAME) -> TargetModules:
        """A TargetModules from a preset name, a ``{"include", "exclude"}`` mapping or a TargetModules.

        Raises HyperparameterValueError naming ``key``, the allowed forms and the fix."""
        if isinstance(value, TargetModules):
            targets = value
        elif isinstance(value, str):
            if value not in PRESETS:
                raise HyperparameterValueError(
                    f"{key} = {value!r} is not a preset: use one of {', '.join(map(repr, PRESET_NAMES))}, or "
                    '{"include": [patterns], "exclude": [patterns]}.'
                )
            targets = PRESETS[value]
        elif isinstance(value, Mapping):
            unknown = sorted(set(value) - {"include", "exclude"})
            if unknown:
                raise HyperparameterValueError(
                    f"{key} has unknown keys {unknown}: custom target modules take only 'include' and 'exclude', "
                    'e.g. {"include": ["*"], "exclude": ["lm_head"]}.'
                )
            targets = cls(
                _patterns(value.get("include", ("*",)), key, "include"), _patterns(value.get("exclude", ()), key, "exclude")
            )
        else:
            raise HyperparameterValueError(
                f"{key} = {value!r} is not allowed: use a preset ({', '.join(map(repr, PRESET_NAMES))}) or "
                '{"include": [patterns], "exclude": [patterns]}.'
            )
        if not targets.include:
            raise HyperparameterValueError(f"{key} includes nothing: give at least one include pattern, e.g. ['*'].")
        return targets

    def to_json(self) -> str | dict[str, list[str]]:
        """The preset name when these patterns are a preset, else ``{"include": [...], "exclude": [...]}``."""
        for name, preset in PRESETS.items():
            if preset == self:
                return name
        return {"include": list(self.include), "exclude": list(self.exclude)}

    def resolve(self, model: nn.Module, accept: Callable[[nn.Module], bool] | None = None) -> list[str]:
        """Names of the layers of ``model`` that ``accept`` takes, included and not excluded, in model order."""
        return self._resolve(model, accept or is_linear)[0]

    def unmatched_includes(self, model: nn.Module, accept: Callable[[nn.Module], bool] | None = None) -> list[str]:
        """Include patterns that match none of the layers ``accept`` takes (a typo, or the wrong model)."""
        return self._resolve(model, accept or is_linear)[1]

    def _resolve(self, model: nn.Module, accept: Callable[[nn.Module], bool]) -> tuple[list[str], list[str]]:
        candidates = [name for name, module in model.named_modules() if name and accept(module)]
        patterns = (*self.include, *self.exclude)
        heads = output_head_names(model) if "@output_head" in patterns else None
        kept = kept_in_float(model) if KEPT_IN_FLOAT in patterns else None
        include = [_matcher(p, heads, kept) for p in self.include]
        exclude = [_matcher(p, heads, kept) for p in self.exclude]
        hits = [False] * len(include)
        chosen = []
        for name in candidates:
            included = False
            for index, matches in enumerate(include):
                if matches(name):
                    hits[index] = included = True
            if included and not any(matches(name) for matches in exclude):
                chosen.append(name)
        unmatched = [p for p, hit in zip(self.include, hits) if not hit and p not in ("*", KEPT_IN_FLOAT)]
        return chosen, unmatched


#: The presets, by the name users write; "all_linear" takes every layer the algorithm can take.
PRESETS: dict[str, TargetModules] = {
    "all_linear": TargetModules(),
    "all_but_output_head": TargetModules(exclude=("@output_head",)),
    "all_but_outlier_layers": TargetModules(exclude=("@outlier_layers",)),
    "all_but_outlier_layers_and_output_head": TargetModules(exclude=("@outlier_layers", "@output_head")),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def _patterns(value: Any, key: str, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        raise HyperparameterValueError(
            f"{key}['{field}'] = {value!r} is not allowed: give a list of non-empty pattern strings "
            "(globs such as 'down_proj' or 'model.layers.0.*', 're:<regex>', '@output_head', '@outlier_layers', '@kept_in_float')."
        )
    for pattern in value:
        if pattern.startswith("@") and pattern not in NAMED_GROUPS:
            raise HyperparameterValueError(
                f"{key}['{field}'] names an unknown group {pattern!r}: the named groups are {', '.join(NAMED_GROUPS)}."
            )
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as error:
                raise HyperparameterValueError(f"{key}['{field}']: {pattern!r} is not a valid regex: {error}.") from None
    return tuple(value)


def _matcher(pattern: str, heads: set[str] | None, kept: set[str] | None = None) -> Callable[[str], bool]:
    if pattern == "@output_head":
        return (heads or set()).__contains__
    if pattern == KEPT_IN_FLOAT:
        return (kept or set()).__contains__
    if pattern == "@outlier_layers":
        return re.compile(OUTLIER_LAYERS).search
    if pattern.startswith("re:"):
        return re.compile(pattern[3:]).search
    suffix = "*." + pattern
    return lambda name: fnmatchcase(name, pattern) or fnmatchcase(name, suffix)


# ====================================================================== the setting in SmashConfig
def target_modules_hyperparameter(default: str) -> Any:
    """The ``target_modules`` hyperparameter: the presets as a ConfigSpace categorical (hashable, samplable),
    marked so that SmashConfig also accepts custom ``{"include", "exclude"}`` patterns for it."""
    from ConfigSpace import Categorical

    if default not in PRESETS:
        raise ValueError(f"target_modules default {default!r} is not a preset: one of {PRESET_NAMES}")
    choices = [default, *(name for name in PRESET_NAMES if name != default)]
    return Categorical(HYPERPARAMETER_NAME, choices, default=default, meta={META_KIND: KIND})


def is_target_modules_hyperparameter(hyperparameter: Any) -> bool:
    """Whether ``hyperparameter`` was made by :func:`target_modules_hyperparameter`."""
    meta = getattr(hyperparameter, "meta", None)
    return isinstance(meta, Mapping) and meta.get(META_KIND) == KIND


def normalize_target_value(value: Any, key: str = HYPERPARAMETER_NAME) -> str | dict[str, list[str]]:
    """What SmashConfig stores (and saves as JSON): the preset name, or ``{"include": [...], "exclude": [...]}``."""
    return TargetModules.parse(value, key).to_json()


def resolve_targets(
    model: nn.Module, value: Any, accept: Callable[[nn.Module], bool] | None = None
) -> list[str]:
    """Names of the layers of ``model`` that the ``target_modules`` ``value`` (preset, dict or TargetModules)
    selects among those ``accept`` takes (default :func:`is_linear`), in the order of ``model.named_modules()``."""
    return TargetModules.parse(value).resolve(model, accept)


def check_targets(
    model: nn.Module, value: Any, accept: Callable[[nn.Module], bool] | None = None, algorithm: str = "this algorithm",
    what: str = "nn.Linear or transformers Conv1D layers",
) -> list[str]:
    """Resolve like :func:`resolve_targets`, raising before anything is modified when the setting selects no
    layer or names an include pattern that matches none. Returns the names."""
    targets = TargetModules.parse(value, f"{algorithm}_target_modules")
    names = targets.resolve(model, accept)
    unmatched = targets.unmatched_includes(model, accept)
    if unmatched:
        raise HyperparameterValueError(
            f"{algorithm}_target_modules: include pattern(s) {unmatched} match none of this model's {what}: "
            f"check the names (e.g. {_examples(model, accept)})."
        )
    if not names:
        raise UnsupportedModelError(
            f"{algorithm} takes {what}; with {algorithm}_target_modules = {targets.to_json()!r} this model has none "
            f"to work on (its layers: {_examples(model, accept)}): choose 'all_linear' or other patterns."
        )
    return names


def _examples(model: nn.Module, accept: Callable[[nn.Module], bool] | None) -> str:
    names = [name for name, module in model.named_modules() if name and (accept or is_linear)(module)]
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") if names else "none"


# ====================================================================== layers kept in float
#: Linear layers whose ``.weight`` a model's own code reads outside the layer's forward, by model_type:
#: Mamba's ``dt_proj.weight @ time_step``, and the head of Mamba-like models, called as
#: ``lm_head(hidden_states.to(lm_head.weight.dtype))``. A swapped quantized layer has no such weight, or an
#: int8 / uint8 one, to which the hidden states would be cast (tiny Mamba, torch_dynamic: relative error 0.84).
#: (grep of transformers 5.24's models for ``.weight @`` and ``.weight.dtype))`` on linear layers.)
WEIGHT_READ_LAYERS: dict[str, tuple[str, ...]] = {
    "mamba": ("dt_proj", "lm_head"), "falcon_mamba": ("dt_proj", "lm_head"), "mamba2": ("lm_head",),
    "xlstm": ("lm_head",), "hy_v4": ("lm_head",), "hy_v4_vl": ("lm_head",),
}


def kept_in_float(model: nn.Module) -> set[str]:
    """Names of the linear layers no quantizer takes unless ``target_modules`` includes ``"@kept_in_float"``
    (what configs saved before schema 5 get, so that they load as they were saved): those the model class
    keeps in float32 (transformers' ``_keep_in_fp32_modules`` / ``_strict``, e.g. T5's ``wo``, whose forward
    casts its input to ``wo.weight.dtype``: quantized, to int8 or uint8 codes; MoE routers' ``gate.weight``),
    matched as transformers matches them (a dotted part of the parameter's name), and :data:`WEIGHT_READ_LAYERS`.
    transformers' own quantizers skip the same layers (``HfQuantizer.get_modules_to_not_convert``)."""
    patterns = {*(getattr(model, "_keep_in_fp32_modules", None) or ()), *(getattr(model, "_keep_in_fp32_modules_strict", None) or ())}
    patterns |= set(WEIGHT_READ_LAYERS.get(getattr(getattr(model, "config", None), "model_type", None), ()))
    if not patterns:
        return set()
    regex = re.compile("|".join(rf"(^|\.){re.escape(pattern)}(\.|$)" for pattern in sorted(patterns)))
    return {name for name, module in model.named_modules() if is_linear(module) and regex.search(f"{name}.weight")}


# ====================================================================== questions about layers
@lru_cache(maxsize=1)
def _conv1d_type() -> type | None:
    try:  # transformers is a dependency; imported on first use so that this module stays cheap to import
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


#: nn.Linear subclasses of transformers models that compute exactly what nn.Linear does (``x @ W.T + b``,
#: weight (out, in)) and are therefore quantized like one: Falcon's FalconLinear only adds the bias after
#: the product instead of inside it. By qualified name, so that checking needs no import of the model code.
PLAIN_LINEAR_SUBCLASSES = frozenset({"transformers.models.falcon.modeling_falcon.FalconLinear"})


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_nn_linear(module: nn.Module) -> bool:
    """A plain nn.Linear by exact type, or one of the :data:`PLAIN_LINEAR_SUBCLASSES`; never another
    subclass (bitsandbytes', quanto's and other quantized layers subclass nn.Linear)."""
    from torch import nn

    cls = type(module)
    return cls is nn.Linear or (issubclass(cls, nn.Linear) and _qualified_name(cls) in PLAIN_LINEAR_SUBCLASSES)


def as_plain_linears(model: nn.Module, names: Iterable[str]) -> None:
    """Put a plain nn.Linear holding the same parameters where a :data:`PLAIN_LINEAR_SUBCLASSES` layer is, for
    libraries that quantize in place and then run the module's own forward (torchao's weight tensors
    implement ``F.linear``, not FalconLinear's ``x @ W.T``). The parameters are shared, not copied."""
    from torch import nn

    for name in names:
        module = model.get_submodule(name)
        if type(module) is nn.Linear or not is_nn_linear(module):
            continue
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight = module.weight
        plain.bias = module.bias
        plain.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)


def is_linear(module: nn.Module) -> bool:
    """The one "is this a linear layer" test: a plain nn.Linear (:func:`is_nn_linear`) or a transformers Conv1D
    (GPT-2's layers), by exact type, so a quantized layer subclassing nn.Linear (bitsandbytes') is never taken
    for one."""
    return is_nn_linear(module) or (type(module) is _conv1d_type() and _conv1d_type() is not None)


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the modules producing the model's outputs (lm_head and the like), which quantizing or
    pruning hurts most; found through transformers' get_output_embeddings when the model has it."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return {name for name, _ in model.named_modules() if name.split(".")[-1] in {"lm_head", "proj_out"}}
    return {name for name, module in model.named_modules() if module is head}


def tied_embeddings(model: nn.Module, names: Iterable[str]) -> dict[str, list[str]]:
    """For each named layer, every path to an nn.Embedding (or subclass) that shares its weight tensor.

    One pass over the model, whatever the number of layers (it was one pass per layer: quadratic).
    T5 reaches its one shared embedding as ``shared``, ``encoder.embed_tokens`` and
    ``decoder.embed_tokens``: all paths are listed. Shared means the same tensor object, or, for tensors
    with storage, the same data pointer and shape (a tie that survived a copy of the parameter object).
    """
    from torch import nn

    def keys(weight: Any) -> list[Any]:
        found: list[Any] = [("id", id(weight))]
        if not weight.is_meta:
            found.append(("ptr", weight.data_ptr(), tuple(weight.shape)))
        return found

    by_weight: dict[Any, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Embedding) and weight is not None:
            for key in keys(weight):
                by_weight.setdefault(key, []).append(path)
    tied: dict[str, list[str]] = {}
    for name in names:
        weight = getattr(model.get_submodule(name), "weight", None)
        paths: list[str] = []
        if weight is not None:
            for key in keys(weight):
                paths.extend(p for p in by_weight.get(key, ()) if p not in paths)
        tied[name] = paths
    return tied
