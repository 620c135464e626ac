"""The multiplanar viewer of the Data and Explore pages: volumes prepared by ``uad``, drawn in the browser.

``viewer_frontend/`` is a Streamlit component (components.v1, a static ``index.html`` + ``viewer.js``, no
build step, nothing from a network). It receives a case's volumes once, as typed arrays (the files' own
values, uint16 codes of [0, 1] images, float32 anomaly maps, uint8 masks and labels; deflated on the way),
and draws the axial,
coronal and sagittal planes with a linked crosshair, orientation letters, the radiological / neurological
switch (radiological by default), window/level per sequence, zoom about the crosshair and pan, layouts (all
planes, 1 × 3, 2 × 2, one large view), heatmap and segmentation overlays, a colour bar, the value under the
cursor with its voxel and scanner position, and a per-slice strip. Moving through the slices or the pixel
threshold never reruns Python: the browser thresholds the float32 maps itself (``uad.scoring.view`` states
the arithmetic; tests/test_browser.py checks it equals ``VolumeScores.prediction``).

The volumes it receives share one grid, (Z, Y, X) in uad's display order (``uad.data.preprocess.
display_stack`` of a RAS+ volume): Z inferior → superior, Y anterior → posterior, X the patient's left →
right. In that order the radiological convention is drawn by mirroring X on screen, which the browser
does; ``screen_columns`` states the rule so it can be tested here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import threading
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from uad.data.preprocess import CONVENTIONS, screen_columns  # noqa: F401

FRONTEND = Path(__file__).resolve().parent / "viewer_frontend"
DTYPES = {"uint8": "uint8", "uint16": "uint16", "int16": "int16", "float32": "float32"}  # what viewer.js decodes
LAYOUTS = ("planes", "1x3", "2x2", "single")  # all planes of every panel; one panel's three planes; panels in one plane; one view

_declared: dict[str, Any] = {}


def declared(name: str, path: Path):
    """The Streamlit component ``name`` served from ``path``, declared on first use (so importing the modules that
    draw one needs no Streamlit); the viewer's and the threshold component's one declaration point."""
    if name not in _declared:
        import streamlit.components.v1 as components

        _declared[name] = components.declare_component(name, path=str(path))
    return _declared[name]


def component():
    return declared("uad_viewer", FRONTEND)


# -- orientation -----------------------------------------------------------------------------------------------
def screen_axial(stack: np.ndarray, z: int, convention: str) -> np.ndarray:
    """The axial slice ``z`` of a (Z, Y, X) display stack as it appears on screen (anterior at the top)."""
    return stack[z][:, screen_columns(stack.shape[2], convention)]


# -- the component's input -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Volume:
    """One volume for the browser and how to read it.

    kind: ``grey`` (drawn with a window), ``heat`` (an anomaly map on the shared colour scale), ``mask``
    (0/1: outlines, the brain mask), ``labels`` (segmentation label values). The value of a stored element is
    ``stored * scale``; ``window`` is the default display window in those values; ``label`` names the volume in
    the readout under the cursor (a full name: sequence, run)."""

    data: np.ndarray
    kind: str = "grey"
    label: str = ""
    window: tuple[float, float] | None = None
    scale: float = 1.0
    unit: str = ""


@dataclasses.dataclass
class Panel:
    title: str
    base: str | list[str]  # a grey volume, or one per channel (the viewer's channel switch picks)
    overlays: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"volume", "kind", ...}
    subtitle: str = ""  # second line of the title (e.g. the run's full name), never cut
    colour: Any = None  # a swatch beside the subtitle: the colour of this run's line in the slice strip


def rgb(colour) -> list[int]:
    if isinstance(colour, str) and colour.startswith("#") and len(colour) == 7:
        return [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return [int(c) for c in colour]


def show(*, key: str, volumes: dict[str, Volume], fresh: bool = False, **spec_args) -> None:
    """Hand the volumes and what to draw to the browser component (``build_spec`` takes ``spec_args``).

    The browser keeps the volumes it received, by content hash, and reports which it holds (the component's
    value); a volume it holds is not sent again, so adding a run beside the others sends only its map.
    ``fresh``: the component was replaced since it last reported: the new frame holds what the tab's store holds.
    """
    import streamlit as st

    spec = build_spec(volumes=volumes, **spec_args)
    # The tab keeps the volumes its viewer frames received in one store (viewer.js ``tabStore``), which a frame that
    # replaces another (a page revisited, another case) finds as its predecessor left it. This frame's last report
    # says what that store holds; a new frame has not reported yet: the tab's last report does.
    reported = _holds(None if fresh else st.session_state.get(key))
    if reported is not None:
        st.session_state[TAB_HOLDS] = reported
    held = set(reported if reported is not None else st.session_state.get(TAB_HOLDS, []))
    todo = {name: v for name, v in volumes.items() if spec["volumes"][name]["hash"] not in held}
    packed = pack({spec["volumes"][name]["hash"]: v.data for name, v in todo.items()})
    payload = {info["arg"]: packed.get(info["hash"], b"") for info in spec["volumes"].values()}
    if os.environ.get("UAD_APP_TIMINGS"):  # read by benchmarks/app_bench.py
        sent = sum(len(b) for b in payload.values())
        print(f"[uad-app] viewer volumes sent: {sent} bytes, deflated from {sum(v.data.nbytes for v in todo.values())} "
              f"({len(held)} held by the browser)", file=sys.stderr, flush=True)
    # ``sent`` names the volumes that carry bytes this time: the component is sent a new render only when its JSON
    # arguments change, so a resend of the same spec (the browser said it lacked a volume) must differ from it.
    component()(spec=spec, key=key, default=None, sent=sorted(packed), **payload)


TAB_HOLDS = "viewer_tab_holds"  # session key: the volume hashes the browser tab's store holds, as last reported
_MAX_HELD = 256


def _holds(reported: Any) -> list[str] | None:
    """The hashes a frame reports it holds (``{"have": [...]}``), checked; None when there is no valid report (a
    report that is not a list of short texts is not trusted: the volumes are sent)."""
    have = reported.get("have") if isinstance(reported, dict) else None
    if (not isinstance(have, list) or len(have) > _MAX_HELD
            or not all(isinstance(h, str) and len(h) <= 80 for h in have)):
        return None
    return have


_kept: list[tuple[tuple, tuple, Any]] = []
_kept_lock = threading.Lock()
_KEPT_MAX = 3


def kept(objects: tuple, extra: tuple, build):
    """``build()``, made once for the same ``objects`` (compared by identity: the arrays and results of the app's
    caches) and equal ``extra``, for the last few such keys. The entry holds the objects themselves, so an id is
    never mistaken for a later object's. Page scripts run afresh on every rerun: what they keep lives here."""
    with _kept_lock:
        for objs, ext, value in _kept:
            if ext == extra and len(objs) == len(objects) and all(a is b for a, b in zip(objs, objects)):
                return value
    value = build()
    with _kept_lock:
        _kept.insert(0, (objects, extra, value))
        del _kept[_KEPT_MAX:]
    return value


_packed: dict[str, bytes] = {}  # content hash -> deflated bytes: a volume is compressed once, whoever asks again
_packed_lock = threading.Lock()
_PACKED_MAX = 24


def pack(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Deflate (zlib, fastest level) the arrays the browser lacks, in parallel threads (zlib releases the GIL).

    A real case's four int16 sequences (37 MB cropped) travel as about 7 MB: the transfer through the
    websocket and Streamlit's front end costs far more per byte than compressing here (see README)."""
    with _packed_lock:
        out = {h: _packed[h] for h in arrays if h in _packed}
    todo = {h: a for h, a in arrays.items() if h not in out}
    if todo:
        with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1, 4)) as pool:
            out.update(zip(todo, pool.map(lambda a: zlib.compress(_little_endian(a).data, 1), todo.values())))
        with _packed_lock:  # sessions run in threads of one server
            _packed.update((h, out[h]) for h in todo)
            while len(_packed) > _PACKED_MAX:
                _packed.pop(next(iter(_packed)))
    return out


def _little_endian(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, a.dtype.newbyteorder("<"))


_hashes: dict[int, str] = {}  # id of a live array -> its hash: a cached case's volumes are hashed once, not per rerun


def volume_hash(v: np.ndarray) -> str:
    """Content hash of a volume (its type and shape included). Remembered while the array lives: the volumes
    handed here are never changed in place (a cached case's arrays, or fresh ones each run)."""
    known = _hashes.get(id(v))
    if known is not None:
        return known
    a = _little_endian(v)
    h = hashlib.blake2b(a.data, digest_size=12).hexdigest() + f"-{a.dtype.name}-" + "x".join(map(str, v.shape))
    try:
        weakref.finalize(v, _hashes.pop, id(v), None)
        _hashes[id(v)] = h
    except TypeError:  # an object that cannot be weakly referenced: just not remembered
        pass
    return h


def matrix(m) -> list[list[float]] | None:
    return None if m is None else [[float(x) for x in row] for row in np.asarray(m, float)]


def build_spec(*, case_id: str, source: str, volumes: dict[str, Volume], panels: Sequence[Panel],
               spacing: Sequence[float], slice_labels: Sequence[int | None], start: Sequence[int], colours: dict[str, Any],
               heat: dict[str, Any] | None = None, threshold: dict[str, Any] | None = None,
               legend: list[tuple[Any, str]] | None = None, stats: list[dict[str, Any]] | None = None,
               strip: dict[str, Any] | None = None, notes: list[str] | None = None, title: str | None = None,
               position: dict[str, Any] | None = None, channels: list[str] | None = None, label_names: dict | None = None,
               memory: str = "", version: Any = None, max_cell_height: int = 360) -> dict[str, Any]:
    """The JSON the component reads (the volumes travel beside it as bytes). Checks the grid agrees.

    ``position``: ``{"to_voxel": 4×4, "affine": 4×4, "exact": bool}`` maps a grid voxel to its index in the source
    file and its scanner position (the readout under the cursor); ``threshold``: the browser-side pixel
    threshold (see viewer.js ``applyThreshold``); ``memory``: what the browser keys its remembered view state by
    (layout, threshold) within a tab."""
    shapes = {name: tuple(v.data.shape) for name, v in volumes.items()}
    shape = next(iter(shapes.values()))
    if len(shape) != 3 or any(s != shape for s in shapes.values()):
        raise ValueError(f"viewer volumes must share one (Z, Y, X) grid, got {shapes}")
    for name, v in volumes.items():
        if v.data.dtype.name not in DTYPES:
            raise ValueError(f"viewer volume {name!r} is {v.data.dtype}; the browser reads {', '.join(DTYPES)}")
    if len(slice_labels) != shape[0]:
        raise ValueError(f"{len(slice_labels)} slice labels for {shape[0]} axial slices")
    for p in panels:
        bases = p.base if isinstance(p.base, list) else [p.base]
        for name in bases + [o["volume"] for o in p.overlays if o["kind"] != "classes"]:  # classes: computed by the browser
            if name not in volumes:
                raise ValueError(f"panel {p.title!r} draws {name!r}, which is not among the volumes {sorted(volumes)}")
    if threshold is not None:
        for k in ("map", "mask"):
            if threshold[k] not in volumes or volumes[threshold[k]].data.dtype.name != ("float32" if k == "map" else "uint8"):
                raise ValueError(f"the threshold's {k} must be a {'float32' if k == 'map' else 'uint8'} volume, got {threshold[k]!r}")
    names = list(volumes)
    spec = {
        "case_id": case_id, "source": source, "title": title or case_id, "shape": list(shape),
        "spacing": [float(s) for s in spacing], "slice_labels": [None if s is None else int(s) for s in slice_labels],
        "start": [int(np.clip(s, 0, n - 1)) for s, n in zip(start, shape)], "convention": "radiological",
        "volumes": {name: {"arg": f"v{i}", "kind": v.kind, "hash": volume_hash(v.data), "dtype": v.data.dtype.name,
                           "label": v.label or name, "scale": float(v.scale), "unit": v.unit, "encoding": "deflate",
                           "window": None if v.window is None else [float(v.window[0]), float(v.window[1])]}
                    for i, (name, v) in enumerate(volumes.items())},
        "panels": [dict(dataclasses.asdict(p), colour=None if p.colour is None else rgb(p.colour)) for p in panels],
        "heat": heat, "threshold": threshold, "position": None if position is None else
        {"to_voxel": matrix(position["to_voxel"]), "affine": matrix(position["affine"]), "exact": bool(position.get("exact"))},
        "channels": channels or [], "label_names": {str(k): v for k, v in (label_names or {}).items()},
        "legend": [{"colour": rgb(c), "label": t} for c, t in (legend or [])], "stats": stats or [], "strip": strip,
        "notes": notes or [], "max_cell_height": max_cell_height, "memory": memory, "layouts": list(LAYOUTS),
    }
    assert names == list(spec["volumes"])
    spec["colours"] = {k: ({str(kk): rgb(vv) for kk, vv in v.items()} if isinstance(v, dict) else rgb(v))
                       for k, v in colours.items()}
    if strip:
        spec["strip"] = dict(strip, lines=[dict(line, colour=rgb(line["colour"])) for line in strip.get("lines", [])],
                             bars=[dict(b, colour=rgb(b["colour"])) for b in strip.get("bars", [])])
    spec["version"] = hashlib.sha1(json.dumps([spec, repr(version)], sort_keys=True, default=str).encode()).hexdigest()[:16]
    return spec
