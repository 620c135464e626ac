"""Models found by name, in the style of timm's ``create_model``."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Literal, NamedTuple, TypeVar

from uad.core.errors import ConfigError
from uad.models.base import AnomalyModel

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
    """One constructor option of a model: its type, default, and fixed choices (``None`` when free)."""

    type: type
    default: Any
    choices: tuple | None = None


def model_options(name: str) -> dict[str, ModelOption]:
    """A model's own options, read from its constructor: name → ModelOption(type, default, choices).

    An option with fixed choices declares them in its annotation as a ``typing.Literal`` (e.g.
    ``norm: Norm = "batch"`` with ``Norm = Literal["batch", "group", "layer", "none"]``); that one place
    gives the CLI's ``choices=``, the app's select box and the constructor's own check. The CLI's
    ``--option`` flags and the app's Train form are both built from this, so a new constructor argument
    shows up in both without further code.
    """
    cls = model_class(name)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):  # an annotation that cannot be resolved: fall back to the defaults' types
        hints = {}
    out: dict[str, ModelOption] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.name in SHARED_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is inspect.Parameter.empty:
            continue
        hint = hints.get(p.name)
        choices = tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else None
        typ = type(p.default) if p.default is not None else (type(choices[0]) if choices else str)
        out[p.name] = ModelOption(typ, p.default, choices)
    return out


def check_model_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options as the constructor takes them, or a ConfigError naming the first wrong one (unknown name,
    wrong type, not one of its choices). Numbers given as int where a float is expected are accepted."""
    known = model_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"model {canonical_name(name)!r} has no option {', '.join(unknown)}; options: {', '.join(known)}")
    out = {}
    for key, value in options.items():
        opt = known[key]
        if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if opt.type is not type(value) and not (opt.type is str and opt.choices is None and value is None):
            kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(opt.type, "text")
            raise ConfigError(f"{key} must be {kind}, got {value!r}")
        if opt.choices is not None and value not in opt.choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, opt.choices))}, got {value!r}")
        out[key] = value
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
