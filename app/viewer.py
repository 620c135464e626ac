"""The multiplanar viewer of the Data and Explore pages: volumes prepared here, drawn in the browser.

``viewer_frontend/`` is a Streamlit component (components.v1, a static ``index.html`` + ``viewer.js``, no
build step, nothing from a network). It receives a case's volumes once, as uint8 arrays, and draws the
axial, coronal and sagittal planes with a linked crosshair, orientation letters, the radiological /
neurological switch (radiological by default), window/level, zoom and pan, heatmap and segmentation
overlays, a colour bar and a per-slice strip. Moving through the slices never reruns Python.

The volumes it receives share one grid, (Z, Y, X) in uad's display order (``uad.data.preprocess.
display_stack`` of a RAS+ volume): Z inferior → superior, Y anterior → posterior, X the patient's left →
right. In that order the radiological convention is drawn by mirroring X on screen, which the browser
does; ``screen_columns`` states the rule so it can be tested here too.

This module only hands to the browser what ``uad`` prepared (``uad.data.display``: windowed, cropped,
quantised volumes; ``uad.scoring.view``: colour scales and per-slice numbers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from uad.data.display import (  # noqa: F401  (what the pages draw: prepared by uad)
    DisplayCase,
    load_display_case,
    quantise,
    unit_to_uint8,
    window_to_uint8,
)
from uad.data.preprocess import CONVENTIONS, screen_columns  # noqa: F401

FRONTEND = Path(__file__).resolve().parent / "viewer_frontend"

_component = None


def component():
    """The declared Streamlit component (declared on first use, so importing this module needs no Streamlit)."""
    global _component
    if _component is None:
        import streamlit.components.v1 as components

        _component = components.declare_component("uad_viewer", path=str(FRONTEND))
    return _component


# -- orientation -----------------------------------------------------------------------------------------------
def screen_axial(stack: np.ndarray, z: int, convention: str) -> np.ndarray:
    """The axial slice ``z`` of a (Z, Y, X) display stack as it appears on screen (anterior at the top)."""
    return stack[z][:, screen_columns(stack.shape[2], convention)]


# -- the component's input -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Panel:
    title: str
    base: str  # name of a grey volume
    overlays: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"volume", "kind", ...}


def rgb(colour) -> list[int]:
    return [int(c) for c in colour]


def show(*, case_id: str, source: str, volumes: dict[str, np.ndarray], kinds: dict[str, str], panels: Sequence[Panel],
         spacing: Sequence[float], slice_labels: Sequence[int | None], start: Sequence[int], key: str,
         colours: dict[str, Any], heat: dict[str, Any] | None = None, legend: list[tuple[Any, str]] | None = None,
         stats: list[dict[str, Any]] | None = None, strip: dict[str, Any] | None = None, notes: list[str] | None = None,
         title: str | None = None, version: Any = None, max_cell_height: int = 360) -> None:
    """Hand the volumes and what to draw to the browser component.

    The browser keeps the volumes it received, by content hash, and reports which it holds (the component's
    value); a volume it holds is not sent again, so a threshold move sends only the new prediction.
    """
    import streamlit as st

    spec = build_spec(case_id=case_id, source=source, volumes=volumes, kinds=kinds, panels=panels, spacing=spacing,
                      slice_labels=slice_labels, start=start, colours=colours, heat=heat, legend=legend, stats=stats,
                      strip=strip, notes=notes, title=title, version=version, max_cell_height=max_cell_height)
    reported = st.session_state.get(key)
    held = set(reported.get("have") or []) if isinstance(reported, dict) else set()
    payload = {}
    for name, v in volumes.items():
        info = spec["volumes"][name]
        payload[info["arg"]] = b"" if info["hash"] in held else np.ascontiguousarray(v, np.uint8).tobytes()
    if os.environ.get("UAD_APP_TIMINGS"):  # read by benchmarks/app_bench.py
        sent = sum(len(b) for b in payload.values())
        print(f"[uad-app] viewer volumes sent: {sent} bytes ({len(held)} held by the browser)", file=sys.stderr, flush=True)
    component()(spec=spec, key=key, default=None, **payload)


def volume_hash(v: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(v).data, digest_size=12).hexdigest() + "-" + "x".join(map(str, v.shape))


def build_spec(*, case_id: str, source: str, volumes: dict[str, np.ndarray], kinds: dict[str, str], panels: Sequence[Panel],
               spacing: Sequence[float], slice_labels: Sequence[int | None], start: Sequence[int], colours: dict[str, Any],
               heat: dict[str, Any] | None = None, legend: list[tuple[Any, str]] | None = None,
               stats: list[dict[str, Any]] | None = None, strip: dict[str, Any] | None = None,
               notes: list[str] | None = None, title: str | None = None, version: Any = None,
               max_cell_height: int = 360) -> dict[str, Any]:
    """The JSON the component reads (the volumes travel beside it as bytes). Checks the grid agrees."""
    shapes = {name: tuple(v.shape) for name, v in volumes.items()}
    shape = next(iter(shapes.values()))
    if len(shape) != 3 or any(s != shape for s in shapes.values()):
        raise ValueError(f"viewer volumes must share one (Z, Y, X) grid, got {shapes}")
    for v in volumes.values():
        if v.dtype != np.uint8:
            raise ValueError(f"viewer volumes must be uint8, got {v.dtype}")
    if len(slice_labels) != shape[0]:
        raise ValueError(f"{len(slice_labels)} slice labels for {shape[0]} axial slices")
    for p in panels:
        for name in [p.base] + [o["volume"] for o in p.overlays]:
            if name not in volumes:
                raise ValueError(f"panel {p.title!r} draws {name!r}, which is not among the volumes {sorted(volumes)}")
    names = list(volumes)
    spec = {
        "case_id": case_id, "source": source, "title": title or case_id, "shape": list(shape),
        "spacing": [float(s) for s in spacing], "slice_labels": [None if s is None else int(s) for s in slice_labels],
        "start": [int(np.clip(s, 0, n - 1)) for s, n in zip(start, shape)], "convention": "radiological",
        "volumes": {name: {"arg": f"v{i}", "kind": kinds.get(name, "grey"), "hash": volume_hash(volumes[name])}
                    for i, name in enumerate(names)},
        "panels": [dataclasses.asdict(p) for p in panels], "colours": colours, "heat": heat,
        "legend": [{"colour": rgb(c), "label": t} for c, t in (legend or [])], "stats": stats or [], "strip": strip,
        "notes": notes or [], "max_cell_height": max_cell_height,
    }
    spec["colours"] = {k: ({str(kk): rgb(vv) for kk, vv in v.items()} if isinstance(v, dict) else rgb(v))
                       for k, v in colours.items()}
    spec["version"] = hashlib.sha1(json.dumps([spec, repr(version)], sort_keys=True, default=str).encode()).hexdigest()[:16]
    return spec


def per_slice(values: np.ndarray, z_of: np.ndarray, n: int) -> list[float | None]:
    """Values of the kept slices placed on the viewer's Z axis (None where a slice was not kept); NaN → None."""
    out: list[float | None] = [None] * n
    for z, v in zip(z_of, np.asarray(values, float)):
        out[int(z)] = None if not np.isfinite(v) else float(v)
    return out
