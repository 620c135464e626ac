"""Differences between two runs' configurations."""

from __future__ import annotations

from typing import Any


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def _show(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, list):
        return f"{len(v)} items: {', '.join(map(str, v[:4]))}{', …' if len(v) > 4 else ''}" if len(v) > 6 else ", ".join(map(str, v))
    return str(v)


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, str]]:
    """The configuration keys (dotted paths) whose values differ between two runs: {key, a, b} rows, sorted."""
    fa, fb = _flatten(a or {}), _flatten(b or {})
    return [{"key": k, "a": _show(fa.get(k)), "b": _show(fb.get(k))}
            for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]

