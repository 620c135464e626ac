"""Models found by name, in the style of timm's ``create_model``."""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from uad.errors import ConfigError
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


def list_models() -> list[str]:
    return list(_REGISTRY)


def model_class(name: str) -> type[AnomalyModel]:
    return _REGISTRY[canonical_name(name)]


# Set by the data (channels, working size), not chosen by the user as model options.
SHARED_ARGS = ("in_channels", "image_size")


def model_options(name: str) -> dict[str, tuple[type, Any]]:
    """A model's own options with their types and defaults, read from its constructor: name → (type, default).

    The CLI's ``--option`` flags and the app's Train form are both built from this, so a new constructor
    argument shows up in both without further code.
    """
    out: dict[str, tuple[type, Any]] = {}
    for p in inspect.signature(model_class(name).__init__).parameters.values():
        if p.name == "self" or p.name in SHARED_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is inspect.Parameter.empty:
            continue
        out[p.name] = (type(p.default) if p.default is not None else str, p.default)
    return out


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
