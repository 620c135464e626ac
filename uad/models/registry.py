"""Models found by name, in the style of timm's ``create_model``."""

from __future__ import annotations

import inspect
import math
import typing
from typing import Annotated, Any, Callable, Literal, NamedTuple, TypeVar

from uad.core.errors import ConfigError
from uad.models.base import AnomalyModel, Range

_REGISTRY: dict[str, type[AnomalyModel]] = {}
_ALIASES: dict[str, str] = {}

M = TypeVar("M", bound=type[AnomalyModel])


def register_model(*aliases: str) -> Callable[[M], M]:
    """Class decorator: registers ``cls.name`` and its aliases."""

    def decorator(cls: M) -> M:
        if not cls.name:
            raise TypeError(f"{cls.__name__} has no name")
        _REGISTRY[cls.name] = cls
        for alias in aliases:
            _ALIASES[alias] = cls.name
        return cls

    return decorator


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return key


def list_models(include_untrainable: bool = False) -> list[str]:
    """Registered model names; only the ones a user can train (not ensembles) unless asked."""
    return [n for n, cls in _REGISTRY.items() if include_untrainable or cls.trainable]


def model_class(name: str) -> type[AnomalyModel]:
    return _REGISTRY[canonical_name(name)]


# Set by the data (channels, working size), not chosen by the user as model options.
SHARED_ARGS = ("in_channels", "image_size")


class ModelOption(NamedTuple):
    """One constructor argument of a model: its type, default, fixed choices (``None`` when free) and, for a
    number, its inclusive bounds (``low``/``high``, ``None`` when unbounded)."""

    type: type
    default: Any
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not a valid value of this option (wrong type, not a choice, out of bounds), or None.
        A whole number where a float is expected is valid (the caller converts it)."""
        typ = self.type
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if typ is not type(value) and not (typ is str and self.choices is None and value is None):
            kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(typ, "text")
            return f"must be {kind}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison
            return f"must be a finite number, got {value}"
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            return f"must be between {self.low:g} and {self.high:g}, got {value:g}"
        return None


def constructor_options(name: str) -> dict[str, ModelOption]:
    """Every keyword argument of a model's constructor (the shared ``in_channels``/``image_size`` too), read
    from its signature: the default, and from the annotation the type, a ``typing.Literal``'s choices and
    an ``Annotated[..., Range(low, high)]``'s bounds."""
    cls = model_class(name)
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
    except (NameError, TypeError):  # an annotation that cannot be resolved: fall back to the defaults' types
        hints = {}
    out: dict[str, ModelOption] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is inspect.Parameter.empty:
            continue
        hint = hints.get(p.name)
        bounds = None
        if typing.get_origin(hint) is Annotated:
            bounds = next((m for m in hint.__metadata__ if isinstance(m, Range)), None)
            hint = typing.get_args(hint)[0]
        choices = tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else None
        typ = type(p.default) if p.default is not None else (type(choices[0]) if choices else str)
        low, high = (typ(bounds.low), typ(bounds.high)) if bounds is not None and typ in (int, float) else (None, None)
        out[p.name] = ModelOption(typ, p.default, choices, low, high)
    return out


def model_options(name: str) -> dict[str, ModelOption]:
    """A model's own options, read from its constructor: name → ModelOption(type, default, choices, low, high).

    An option with fixed choices declares them in its annotation as a ``typing.Literal`` (e.g.
    ``norm: Norm = "batch"`` with ``Norm = Literal["batch", "group", "layer", "none"]``), a number its
    bounds as ``typing.Annotated[int, Range(1, 256)]``; that one place gives the CLI's ``choices=`` and
    range check, the app's select box or bounded number input, the training settings' check and the
    checkpoint loader's. The CLI's ``--option`` flags and the app's Train form are both built from this,
    so a new constructor argument shows up in both without further code.
    """
    return {k: v for k, v in constructor_options(name).items() if k not in SHARED_ARGS}


def check_model_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options as the constructor takes them, or a ConfigError naming the first wrong one (unknown name,
    wrong type, not one of its choices, out of its bounds, NaN or infinite). Numbers given as int where a
    float is expected are accepted."""
    return _check(name, options, model_options(name), "model option ")


def check_hparams(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument (``in_channels`` and ``image_size`` too) checked as ``check_model_options``
    checks the options: what a checkpoint's hyper-parameters must pass before a model is built from them.
    A model made of other models (an ensemble) checks its own (``AnomalyModel.check_parts``)."""
    cls = model_class(name)
    if cls.check_parts.__func__ is not AnomalyModel.check_parts.__func__:  # overridden (bound methods differ each time)
        return cls.check_parts(dict(hparams))
    return _check(name, hparams, constructor_options(name), "")


def recorded_hparams(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """A record's hyper-parameters (a checkpoint's, a run's) checked as ``check_hparams`` checks them, with every
    option the record predates at the value it was trained with (``AnomalyModel.recorded_defaults``), not at
    today's default: an older checkpoint rebuilds the architecture its weights belong to. (A model made of other
    models has none of its own; its ``check_parts`` reads its parts as records.)"""
    return check_hparams(name, {**model_class(name).recorded_defaults, **hparams})


def resolved_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of a model (not ``in_channels``/``image_size``) as a model built with ``options`` would have
    it: today's defaults, then ``options``. What a result depends on, where ``options`` alone would not say
    which default it was made with."""
    return {**{k: o.default for k, o in model_options(name).items()}, **options}


def _check(name: str, values: dict[str, Any], known: dict[str, ModelOption], what: str) -> dict[str, Any]:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"model {canonical_name(name)!r} has no option {', '.join(map(str, unknown))}; "
                          f"options: {', '.join(known)}")
    out = {}
    for key, value in values.items():
        opt = known[key]
        problem = opt.problem(value)
        if problem:
            raise ConfigError(f"{what}{key} {problem}")
        out[key] = float(value) if opt.type is float else value
    return out


def model_description(name: str) -> str:
    """One line on what the model is: its ``description``, else the first line of its own docstring."""
    cls = model_class(name)
    if cls.description:
        return cls.description
    doc = inspect.cleandoc(cls.__doc__ or "")
    return doc.splitlines()[0] if doc else cls.name


def create_model(name: str, **config: Any) -> AnomalyModel:
    """Build a model by name (or alias) with keyword hyper-parameters, e.g. ``create_model("vit", in_channels=1)``."""
    cls = model_class(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = sorted(set(config) - set(accepted))
    # A typo in a user's model options is a ConfigError naming the valid ones, not a TypeError traceback.
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"model {cls.name!r} has no option {', '.join(unknown)}; "
                          f"options: {', '.join(accepted)}")
    return cls(**config)
