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

This module only prepares pictures of what ``uad`` computed: display windowing (percentiles over the
brain mask as uad defines it), cropping to that mask, quantising maps to a fixed colour scale.
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

FRONTEND = Path(__file__).resolve().parent / "viewer_frontend"
CONVENTIONS = ("radiological", "neurological")
DISPLAY_PERCENTILES = (0.5, 99.5)  # display window over brain voxels (not the models' normalisation)
CROP_MARGIN = 6  # voxels kept around the brain's bounding box

_component = None


def component():
    """The declared Streamlit component (declared on first use, so importing this module needs no Streamlit)."""
    global _component
    if _component is None:
        import streamlit.components.v1 as components

        _component = components.declare_component("uad_viewer", path=str(FRONTEND))
    return _component


# -- orientation -----------------------------------------------------------------------------------------------
def screen_columns(width: int, convention: str) -> np.ndarray:
    """For each screen column of an axial or coronal view, the X index (patient left → right) drawn there.

    Radiological: the patient's right on the screen's left (X mirrored); neurological: X as stored.
    Mirrors ``flipped()`` in viewer.js.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    x = np.arange(width)
    return x[::-1] if convention == "radiological" else x


def screen_axial(stack: np.ndarray, z: int, convention: str) -> np.ndarray:
    """The axial slice ``z`` of a (Z, Y, X) display stack as it appears on screen (anterior at the top)."""
    return stack[z][:, screen_columns(stack.shape[2], convention)]


def canonical_spacing(affine: np.ndarray, ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along the RAS+ axes of a volume reoriented by ``ornt`` from a file with ``affine``."""
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    out = [1.0, 1.0, 1.0]
    for src_axis, (ras_axis, _) in enumerate(np.asarray(ornt)):
        out[int(ras_axis)] = float(zooms[src_axis])
    return out[0], out[1], out[2]


# -- display scaling -----------------------------------------------------------------------------------------
def window_to_uint8(volume: np.ndarray, brain: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES) -> np.ndarray:
    """Display bytes: the brain's [low, high] intensity percentiles → 0…255, everything outside the brain 0.

    Percentiles over brain voxels only, so the zero background (80 % of a BraTS grid) and a few negative
    interpolation values at the brain's edge neither shrink the contrast nor turn the background grey.
    """
    inside = volume[brain]
    if inside.size == 0:
        return np.zeros(volume.shape, np.uint8)
    sample = inside[:: max(1, inside.size // 400_000)]  # a subsample is plenty for a display percentile
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((volume - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    out[~brain] = 0
    return out


def bounding_box(mask: np.ndarray, margin: int = CROP_MARGIN) -> tuple[slice, ...]:
    """Slices of ``mask``'s bounding box on every axis, ``margin`` voxels wider (clipped to the array)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for axis, n in enumerate(mask.shape):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, n)))
    return tuple(out)


def quantise(maps: np.ndarray, vmax: float) -> np.ndarray:
    """Anomaly maps → uint8 on the fixed scale 0…vmax (255 = vmax or more), the colour bar's scale."""
    return (np.clip(np.asarray(maps, np.float32) / max(float(vmax), 1e-12), 0, 1) * 255).round().astype(np.uint8)


def unit_to_uint8(images: np.ndarray) -> np.ndarray:
    """Images already in [0, 1] (uad's normalised inputs and reconstructions) → 0…255."""
    return (np.clip(np.asarray(images, np.float32), 0, 1) * 255).round().astype(np.uint8)


# -- the Data page's volumes -----------------------------------------------------------------------------------
@dataclasses.dataclass
class DisplayCase:
    """A case ready for the viewer: every readable modality windowed and cropped to the brain."""

    case_id: str
    source: str  # the case's folder: the viewer shows which files it draws
    mods: dict[str, np.ndarray]  # (Z, Y, X) uint8 each
    labels: np.ndarray | None  # (Z, Y, X) uint8 label values, None when unlabelled or unreadable
    spacing: tuple[float, float, float]  # mm along (Z, Y, X)
    slice_labels: list[int]  # index in the source file of each Z
    errors: dict[str, str]  # modality → why it could not be read
    seg_error: str | None  # why the segmentation could not be read (names the file)
    crop: tuple[slice, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.mods.values())).shape

    @property
    def present(self) -> list[int]:
        return [] if self.labels is None else sorted(int(v) for v in np.unique(self.labels) if v)


def load_display_case(case) -> DisplayCase:
    """Read every modality of ``case`` (a ``uad.data.cases.Case``) and its segmentation for display.

    Each file is read on its own so one unreadable file costs only itself (reported, not raised).
    The brain mask is uad's (``brain_mask``: non-zero in any channel, largest part, holes filled).
    """
    from uad.core.errors import UADError
    from uad.data.cases import MODALITIES
    from uad.data.preprocess import brain_mask, display_stack
    from uad.data.volumes import load_case

    raw: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    first = None
    for mod in MODALITIES:
        if mod not in case.modalities:
            continue
        try:
            vols = load_case(dataclasses.replace(case, modalities={mod: case.modalities[mod]}, seg=None), (mod,))
        except UADError as exc:
            errors[mod] = str(exc)
            continue
        except MemoryError:
            errors[mod] = f"{case.modalities[mod]}: not enough memory to load this volume"
            continue
        if first is not None and vols.images.shape[1:] != first.images.shape[1:]:
            errors[mod] = (f"{case.modalities[mod]}: shape {vols.images.shape[1:]} differs from "
                           f"{case.modalities[next(iter(raw))].name} {first.images.shape[1:]}")
            continue
        first = first or vols
        raw[mod] = vols.images[0]
    out = DisplayCase(case.case_id, str(Path(next(iter(case.modalities.values()))).parent) if case.modalities else "",
                      {}, None, (1.0, 1.0, 1.0), [], errors, None)
    if first is None:
        return out
    labels = None
    if case.seg is not None:
        try:
            seg_vols = load_case(dataclasses.replace(case, modalities={first.modalities[0]: case.modalities[first.modalities[0]]}),
                                 first.modalities)
            labels = display_stack(seg_vols.labels)
        except UADError as exc:
            out.seg_error = str(exc)
        except MemoryError:
            out.seg_error = f"{case.seg}: not enough memory to load the segmentation"
    brain = display_stack(brain_mask(np.stack(list(raw.values()))))
    box = bounding_box(brain)
    out.crop = box
    for mod, volume in raw.items():
        out.mods[mod] = np.ascontiguousarray(window_to_uint8(display_stack(volume), brain)[box])
    if labels is not None:
        out.labels = np.ascontiguousarray(labels[box])
    sx, sy, sz = canonical_spacing(first.affine, first.ornt)
    out.spacing = (sz, sy, sx)
    out.slice_labels = [int(first.source_axial_index(k)) for k in range(box[0].start, box[0].stop)]
    return out


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
