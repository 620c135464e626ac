"""Checks of the fields of a JSON record, shared by every reader of one (run status, run configuration,
run labels, checkpoint records): a field has its type and bounds when read, as strictly as when written.

Each check returns the value (converted where that is lossless, e.g. an int where a float is expected)
or raises ``FieldError`` with the field's name and what is wrong, which the reader turns into an error
naming the file.
"""

from __future__ import annotations

import math
from typing import Any

MAX_TEXT = 10_000
MAX_ITEMS = 200_000
MAX_DEPTH = 8


class FieldError(ValueError):
    """A field of a record that fails its check."""


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finite(value: Any) -> bool:
    """A number (not a bool) that is neither NaN nor infinite, nor an int too large to be a float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(10**300) < value < 10**300
    return isinstance(value, float) and math.isfinite(value)


def whole(d: dict, key: str, low: int = 0, high: int = 10**12, default: int | None = None) -> int | None:
    """An int in [low, high], or None (absent or null: ``default``)."""
    value = d.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FieldError(f"{key} must be a whole number between {low} and {high}, got {show(value)}")
    return value


def number(d: dict, key: str, low: float = -math.inf, high: float = math.inf) -> float | None:
    """A finite number in [low, high], or None (absent or null; NaN and infinity are stored as null)."""
    value = d.get(key)
    if value is None:
        return None
    if not finite(value) or not low <= value <= high:
        raise FieldError(f"{key} must be a finite number{_range(low, high)} or null, got {show(value)}")
    return float(value)


def text(d: dict, key: str, limit: int = MAX_TEXT, choices: tuple[str, ...] | None = None) -> str | None:
    """A string of at most ``limit`` characters (one of ``choices`` when given), or None."""
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise FieldError(f"{key} must be a text of at most {limit} characters, got {show(value)}")
    if choices is not None and value not in choices:
        raise FieldError(f"{key} must be one of {', '.join(choices)}, got {show(value)}")
    return value


def plain(value: Any, where: str, depth: int = 0) -> Any:
    """Plain, bounded JSON (finite numbers, short texts, not too many items, not too deep); returned as is."""
    if depth > MAX_DEPTH:
        raise FieldError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool) or finite(value):
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise FieldError(f"{where} holds a text of {len(value):,} characters")
        return value
    if isinstance(value, (list, dict)):
        if len(value) > MAX_ITEMS:
            raise FieldError(f"{where} holds {len(value):,} items")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            plain(v, f"{where}.{k}", depth + 1)
        return value
    raise FieldError(f"{where} must be a finite number, a text, a list or an object, got {show(value)}")


def obj(d: dict, key: str) -> dict | None:
    """A JSON object of plain, bounded JSON, or None."""
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(f"{key} must be a JSON object, got {show(value)}")
    return plain(value, key)


def _range(low: float, high: float) -> str:
    if math.isinf(low) and math.isinf(high):
        return ""
    if math.isinf(high):
        return f" >= {low:g}"
    return f" between {low:g} and {high:g}"
