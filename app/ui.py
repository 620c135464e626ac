"""Shared view helpers for the app: dataset state, overlays, plotly figures, run processes.

The app holds no science of its own: everything computed here comes from ``uad`` (loading, scoring,
metrics); this module only caches it, turns it into pictures and starts/stops ``python -m uad``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from uad import jobs, paths, report, runs
from uad.data.cases import MODALITIES, Case, discover_cases
from uad.errors import UADError

if TYPE_CHECKING:
    from uad.data.preprocess import WorkingCase

REPO_ROOT = paths.REPO_ROOT
# What bad input (files, folders, checkpoints) can raise: shown as a message on the page, never a traceback.
# MemoryError: one oversized case must cost a message, not the page (or the other cases).
APP_ERRORS = (UADError, MemoryError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError)

# -- where the app listens ------------------------------------------------------------------------------
_FROM_COMMAND_LINE = "command-line argument or environment variable"  # streamlit.config._DEFINED_BY_FLAG


def is_local_address(address: str | None) -> bool:
    """Loopback or a unix socket. None or "" means every interface (Streamlit's default)."""
    import ipaddress

    if not address:
        return False
    if address == "localhost" or address.startswith("unix://"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a network interface


def address_problem() -> str | None:
    """Why the app must not serve on the configured address, or None when it may.

    A network address is fine only when the user gave it on the command line (or as
    STREAMLIT_SERVER_ADDRESS); from a config file or Streamlit's default it is an accident, e.g. a
    `streamlit run` started outside the repository, where the repository's config.toml is not read.
    """
    from streamlit import config

    address = config.get_option("server.address")
    where = config.get_where_defined("server.address")
    if is_local_address(address) or where == getattr(config, "_DEFINED_BY_FLAG", _FROM_COMMAND_LINE):
        return None
    shown = address or "every network interface"
    origin = "Streamlit's default" if where == "<default>" else where
    return (f"This app would be served on {shown} ({origin}), reachable from other machines. It serves on "
            "127.0.0.1 only unless you ask otherwise: start it with `python -m uad app`, or pass "
            "`--server.address 127.0.0.1` (or a network address, deliberately) to `streamlit run`.")


def require_local_address() -> None:
    """Stop the page when the running server listens on a network address nobody asked for."""
    from streamlit.runtime import Runtime

    # Bare mode has no runtime, and AppTest's is a mock: no server, nothing listens.
    if not Runtime.exists() or type(Runtime.instance()) is not Runtime:
        return
    problem = address_problem()
    if problem:
        print(f"uad app: refusing to serve: {problem}", file=sys.stderr, flush=True)
        st.error(problem)
        st.stop()


# -- colours -------------------------------------------------------------------------------------------
# Okabe–Ito colours: distinguishable with the common colour-vision deficiencies and on a grey image.
GT_CONTOUR = (0, 255, 255)  # cyan: the ground-truth tumour outline, on top of every heatmap
PRED_COLOURS = {"TP": (240, 228, 66), "FP": (204, 121, 167), "FN": (86, 180, 233)}
SEG_NAMES_2021 = {1: "necrotic core", 2: "oedema", 4: "enhancing tumour"}
SEG_NAMES_2023 = {1: "necrotic core", 2: "oedema", 3: "enhancing tumour"}
SEG_COLOURS = {1: (213, 94, 0), 2: (240, 228, 66), 3: (86, 180, 233), 4: (86, 180, 233)}  # enhancing: 4 (2021) or 3 (2023)
NON_ENHANCING = (0, 158, 115)  # label 3 when 4 is present too (BraTS 2017-18: non-enhancing tumour)
MODEL_COLOURS = ["#56B4E9", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#F0E442", "#0072B2"]
BASELINE_STYLE = {"intensity": ("intensity baseline", "#BBBBBB", "dash"), "brain_area": ("brain-area baseline", "#888888", "dot")}


def _lut_from(hex_colours: list[str]) -> np.ndarray:
    """256-entry RGB lookup table interpolated from a plotly colour scale (no matplotlib needed)."""
    stops = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in hex_colours], np.float32)
    x = np.linspace(0, 1, len(stops))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, stops[:, c]) for c in range(3)], axis=1).astype(np.uint8)


def _inferno() -> np.ndarray:
    import plotly.colors as pc

    return _lut_from(pc.sequential.Inferno)


INFERNO = _inferno()  # perceptual, dark→bright; reads as "more anomalous = brighter"


# -- active dataset --------------------------------------------------------------------------------------
def active_root() -> Path:
    """The dataset the pages show: the user's folder if set on the Data page, else the demo cohort."""
    root = st.session_state.get("data_root")
    return Path(root) if root else paths.demo_dir()


def set_active_root(root: str | Path | None) -> None:
    st.session_state["data_root"] = str(root) if root else None


def is_demo(root: Path) -> bool:
    return Path(root).resolve() == paths.demo_dir().resolve()


def dataset_label(root: Path) -> str:
    return f"demo cohort ({root})" if is_demo(root) else str(root)


def _folder_stamp(root: Path) -> float:
    """Changes when cases are added or removed (top-level mtime), so discovery is re-run then."""
    try:
        return root.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=16, ttl=60)
def _discover(root: str, stamp: float):
    return discover_cases(root)


def discover(root: Path) -> tuple[list[Case], list, str | None]:
    """(cases, skipped, error message). Never raises for a bad folder."""
    try:
        cases, skipped = _discover(str(root), _folder_stamp(Path(root)))
    except UADError as exc:
        return [], [], str(exc)
    except OSError as exc:
        return [], [], f"{root}: cannot read the folder ({exc.strerror or exc})"
    return cases, skipped, None


def find_case(root: Path, case_id: str) -> Case | None:
    cases, _, _ = discover(root)
    return next((c for c in cases if c.case_id == case_id), None)


def case_stamp(case: Case) -> tuple:
    """Size and mtime of every file of a case: part of every cache key built from it."""
    out = []
    for p in [*case.modalities.values(), case.seg]:
        if p is None:
            continue
        try:
            st_ = p.stat()
            out.append((str(p), st_.st_size, st_.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


def seg_convention(labels_present: set[int]) -> tuple[str, dict[int, str]]:
    """Which BraTS label convention a seg uses, from the labels it holds (4 → 2021, 3 → 2023)."""
    if 4 in labels_present and 3 not in labels_present:
        return "BraTS 2021 labels (1, 2, 4)", SEG_NAMES_2021
    if 3 in labels_present and 4 not in labels_present:
        return "BraTS 2023 labels (1, 2, 3)", SEG_NAMES_2023
    if 3 in labels_present and 4 in labels_present:
        return "older BraTS labels (1, 2, 3, 4)", {1: "necrotic core", 2: "oedema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
    return "BraTS labels (no enhancing label in this case)", {1: "necrotic core", 2: "oedema"}


def seg_colour(value: int, present) -> tuple[int, int, int]:
    if value == 3 and 4 in present:
        return NON_ENHANCING
    return SEG_COLOURS.get(int(value), (200, 200, 200))


# -- display volumes (Data page) ------------------------------------------------------------------------
def _to_uint8(stack: np.ndarray) -> np.ndarray:
    """Clip at the 99.5th percentile of brain (non-zero) voxels: display only, not the model's scaling."""
    brain = stack[stack != 0][::7]  # a subsample is plenty for a display percentile (and 7x faster)
    hi = float(np.percentile(brain, 99.5)) if brain.size else 1.0
    lo = min(0.0, float(brain.min())) if brain.size else 0.0
    return (np.clip((stack - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


@st.cache_resource(show_spinner=False, max_entries=3)  # resource: no 30 MB pickle copy per call
def load_display_case(root: str, case_id: str, stamp: tuple) -> dict[str, Any]:
    """Every modality at full resolution as uint8 (Z, Y, X) display stacks, plus the seg; per-file errors."""
    from uad.data.preprocess import display_stack
    from uad.data.volumes import load_case

    case = find_case(Path(root), case_id)
    if case is None:
        return {"error": f"case {case_id} is no longer in {root}"}
    out: dict[str, Any] = {"mods": {}, "errors": {}, "labels": None, "seg_error": None, "src_index": None}
    for mod in MODALITIES:
        if mod not in case.modalities:
            continue
        try:
            vols = load_case(dataclasses.replace(case, modalities={mod: case.modalities[mod]}, seg=None), (mod,))
            out["mods"][mod] = _to_uint8(display_stack(vols.images[0]))
        except UADError as exc:
            out["errors"][mod] = str(exc)
            continue
        except MemoryError:
            out["errors"][mod] = f"{case.modalities[mod]}: not enough memory to load this volume"
            continue
        if out["src_index"] is None:
            out["src_index"] = np.array([vols.source_axial_index(k) for k in range(vols.images.shape[-1])])
    if case.seg is not None and out["mods"]:
        first = next(iter(out["mods"]))
        try:
            vols = load_case(dataclasses.replace(case, modalities={first: case.modalities[first]}), (first,))
            out["labels"] = display_stack(vols.labels)
        except UADError as exc:
            out["seg_error"] = str(exc)
        except MemoryError:
            out["seg_error"] = f"{case.seg}: not enough memory to load the segmentation"
    if out["mods"]:
        # Crop every stack to the brain's bounding box (over all slices): bigger brains on screen.
        ref = next(iter(out["mods"].values()))
        fp = ref.any(axis=0)
        rows, cols = np.flatnonzero(fp.any(axis=1)), np.flatnonzero(fp.any(axis=0))
        if rows.size:
            m = 6  # pixels of margin
            r0, r1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, fp.shape[0])
            c0, c1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, fp.shape[1])
            crop = lambda a: np.ascontiguousarray(a[:, r0:r1, c0:c1]) if a.shape[1:] == fp.shape else a  # noqa: E731
            out["mods"] = {k: crop(v) for k, v in out["mods"].items()}
            if out["labels"] is not None:
                out["labels"] = crop(out["labels"])
    if out["labels"] is not None:
        present = sorted(int(v) for v in np.unique(out["labels"]) if v)
        out["present"] = present
        out["counts"] = {v: (out["labels"] == v).sum(axis=(1, 2)) for v in present}
    return out


# -- overlays ------------------------------------------------------------------------------------------
def grey(img: np.ndarray, scale: float = 1, vmax: float | None = None) -> np.ndarray:
    """uint8 or float image → uint8 grey, enlarged ``scale``× (bilinear) so contours can be drawn crisply."""
    if img.dtype != np.uint8:
        hi = vmax if vmax is not None else max(float(img.max()), 1e-6)
        img = (np.clip(img.astype(np.float32) / hi, 0, 1) * 255).astype(np.uint8)
    if scale != 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return img


def grey_rgb(img: np.ndarray, scale: float = 1, vmax: float | None = None) -> np.ndarray:
    return np.repeat(grey(img, scale, vmax)[..., None], 3, axis=2)


def _up(mask: np.ndarray, scale: float) -> np.ndarray:
    m = mask.astype(np.uint8)
    return cv2.resize(m, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale != 1 else m


def draw_contour(rgb: np.ndarray, mask: np.ndarray, colour, scale: float = 1, thickness: int = 2) -> np.ndarray:
    """Outline of ``mask`` (at the image's working size) on the enlarged RGB image, anti-aliased."""
    if not mask.any():
        return rgb
    contours, _ = cv2.findContours(_up(mask, scale), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, tuple(int(c) for c in colour), thickness, lineType=cv2.LINE_AA)
    return rgb


def fill(rgb: np.ndarray, mask: np.ndarray, colour, alpha: float, scale: float = 1) -> np.ndarray:
    m = _up(mask, scale).astype(bool)
    if m.any():
        rgb[m] = ((1 - alpha) * rgb[m] + alpha * np.asarray(colour, np.float32)).astype(np.uint8)
    return rgb


def heat_overlay(image: np.ndarray, heat: np.ndarray, vmax: float, scale: float, floor: float = 0.2, max_alpha: float = 0.85) -> np.ndarray:
    """Heatmap in inferno over the grey image; transparency grows with the value so anatomy stays visible.

    Values under ``floor``·vmax are fully transparent (noise floor of the residual).
    """
    base = grey_rgb(image, scale, vmax=1.0).astype(np.float32)
    h = np.clip(heat / max(vmax, 1e-6), 0, 1).astype(np.float32)
    if scale != 1:
        h = cv2.resize(h, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    colour = INFERNO[(h * 255).astype(np.uint8)].astype(np.float32)
    alpha = (max_alpha * np.clip((h - floor) / (1 - floor), 0, 1) ** 0.6)[..., None]
    return (base * (1 - alpha) + colour * alpha).astype(np.uint8)


def seg_overlay(image_u8: np.ndarray, labels: np.ndarray | None, scale: float, alpha: float = 0.45, outline: bool = False) -> np.ndarray:
    if labels is None or not labels.any():
        return grey(image_u8, scale)  # one channel: a third of the PNG work
    rgb = grey_rgb(image_u8, scale)
    present = set(int(v) for v in np.unique(labels))
    for value in sorted(present - {0}):
        colour = seg_colour(value, present)
        if outline:
            draw_contour(rgb, labels == value, colour, scale, 2)
        else:
            fill(rgb, labels == value, colour, alpha, scale)
    return rgb


def pred_vs_truth(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, scale: float) -> np.ndarray:
    """TP / FP / FN in three colours over the image; only the prediction (FP colour) when unlabelled."""
    rgb = grey_rgb(image, scale, vmax=1.0)
    if truth is None:
        return fill(rgb, pred, PRED_COLOURS["FP"], 0.6, scale)
    fill(rgb, pred & truth, PRED_COLOURS["TP"], 0.65, scale)
    fill(rgb, pred & ~truth, PRED_COLOURS["FP"], 0.65, scale)
    fill(rgb, ~pred & truth, PRED_COLOURS["FN"], 0.65, scale)
    return rgb


def png(image: np.ndarray) -> str:
    """A grey (H, W) or RGB (H, W, 3) uint8 image as a PNG data URL for ``st.image``.

    Fast zlib settings (~5 ms at 256 px, lossless so contours stay sharp), and a data URL so Streamlit
    neither re-opens the image with PIL nor serves it as a separate file: a slider move stays cheap.
    """
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image if image.ndim == 2 else image[..., ::-1]), params)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def swatch(colour, label: str) -> str:
    r, g, b = colour
    return (f"<span style='display:inline-block;width:0.9em;height:0.9em;background:rgb({r},{g},{b});"
            f"border-radius:2px;margin:0 0.3em 0 0.8em;vertical-align:-0.1em'></span>{label}")


def legend(items: list[tuple[tuple[int, int, int], str]]) -> None:
    st.markdown("<div style='font-size:0.9em'>" + "".join(swatch(c, t) for c, t in items) + "</div>", unsafe_allow_html=True)


def colourbar(vmax: float, label: str = "anomaly score") -> None:
    stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in INFERNO[::32])
    st.markdown(
        f"<div style='font-size:0.85em'>{label}: 0 "
        f"<span style='display:inline-block;width:9em;height:0.8em;background:linear-gradient(90deg,{stops});"
        f"vertical-align:-0.05em;border-radius:2px'></span> {vmax:.3g}+</div>",
        unsafe_allow_html=True,
    )


# -- figures -------------------------------------------------------------------------------------------
# Built in one constructor call with plain dicts and no plotly template (Streamlit's theme styles them):
# plotly's per-call validation and template copies cost tens of ms, which a slider cannot afford.
def layout(height: int, **kw) -> dict:
    return dict(height=height, margin=dict(l=10, r=10, t=30, b=10), template="none",
                legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0), **kw)


def vline(x: float, colour: str = "#FFFFFF", width: int = 2, dash: str = "solid") -> dict:
    return dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=dict(color=colour, width=width, dash=dash))


def hline(y: float, colour: str, dash: str = "dot") -> dict:
    return dict(type="line", x0=0, x1=1, xref="paper", y0=y, y1=y, line=dict(color=colour, width=1, dash=dash))


def loss_figure(records: list[dict], steps: list[dict] | None = None) -> go.Figure:
    """Training losses every few steps (thin lines) and per epoch (markers), and the validation loss per epoch,
    on one epoch axis (a step's position is its fraction of the way through training)."""
    epochs = [r["epoch"] for r in records]
    keys = sorted({k for r in records for k in (r.get("train") or {})} | {k for r in steps or [] for k in (r.get("train") or {})})
    data = []
    for i, k in enumerate(keys):
        colour = MODEL_COLOURS[i % len(MODEL_COLOURS)]
        if steps:
            data.append(go.Scatter(x=[r["epoch"] for r in steps], y=[(r.get("train") or {}).get(k) for r in steps],
                                   name=f"train {k} (steps)", mode="lines", line=dict(color=colour, width=1), opacity=0.6))
        data.append(go.Scatter(x=epochs, y=[(r.get("train") or {}).get(k) for r in records], name=f"train {k} (epoch)",
                               mode="markers" if steps else "lines+markers", marker=dict(color=colour, size=8),
                               line=dict(color=colour)))
    data.append(go.Scatter(x=epochs, y=[r.get("val_loss") for r in records], name="validation loss", mode="lines+markers",
                           line=dict(color="#DDDDDD", dash="dash")))
    return go.Figure(data=data, layout=layout(260, xaxis=dict(title=dict(text="epoch"), dtick=1 if 1 < len(epochs) < 15 else None),
                                              yaxis=dict(title=dict(text="loss"))))


def overlay_figure(series: list[tuple[str, list[dict], list[dict]]], curve: str = "validation") -> go.Figure:
    """Several runs' loss curves on one figure: ``series`` is (label, epoch records, step records) per run.

    ``curve="validation"``: the validation loss per epoch; ``"training"``: each run's main training loss
    ("loss", else its first) every few steps where recorded, else per epoch."""
    data = []
    for i, (label, records, steps) in enumerate(series):
        colour = MODEL_COLOURS[i % len(MODEL_COLOURS)]
        if curve == "validation":
            data.append(go.Scatter(x=[r["epoch"] for r in records], y=[r.get("val_loss") for r in records], name=label,
                                   mode="lines+markers", line=dict(color=colour)))
            continue
        source = steps or records
        keys = [k for r in source for k in (r.get("train") or {})]
        key = "loss" if "loss" in keys else (keys[0] if keys else None)
        data.append(go.Scatter(x=[r["epoch"] for r in source], y=[(r.get("train") or {}).get(key) for r in source],
                               name=f"{label} ({key})", mode="lines", line=dict(color=colour)))
    title = "validation loss" if curve == "validation" else "training loss"
    return go.Figure(data=data, layout=layout(320, xaxis=dict(title=dict(text="epoch")), yaxis=dict(title=dict(text=title))))


def slice_strip(x: np.ndarray, bars: dict[str, tuple[np.ndarray, tuple]], current: int, line: tuple[np.ndarray, str] | None = None,
                threshold: float | None = None, height: int = 170, bar_title: str = "tumour voxels") -> go.Figure:
    """Per-slice strip along the volume: stacked bars (tumour) and an optional score line; current slice marked."""
    on_y2 = line is not None
    data = [go.Bar(x=x, y=values, name=name, marker_color=f"rgb{tuple(colour)}", opacity=0.45 if on_y2 else 0.9,
                   yaxis="y2" if on_y2 else "y") for name, (values, colour) in bars.items()]
    shapes = [vline(current)]
    extra: dict[str, Any] = {"yaxis": dict(title=dict(text=bar_title))}
    if on_y2:
        data.append(go.Scatter(x=x, y=line[0], name=line[1], mode="lines", line=dict(color="#F7D13D", width=2)))
        if threshold is not None:
            shapes.append(hline(threshold, "#F7D13D"))
        extra = {"yaxis": dict(title=dict(text="slice score")),
                 "yaxis2": dict(overlaying="y", side="right", showgrid=False, showticklabels=False)}
    return go.Figure(data=data, layout=layout(height, barmode="stack", bargap=0, shapes=shapes,
                                              xaxis=dict(title=dict(text="axial slice")), **extra))


# -- runs (state and processes live in uad.jobs) ---------------------------------------------------------
def list_run_views(include_shipped: bool = True, archived: bool = False) -> list[jobs.RunView]:
    try:
        return jobs.list_run_views(include_shipped=include_shipped, archived=archived)
    except APP_ERRORS as exc:  # e.g. a run folder whose config.json is valid JSON but not an object
        st.error(f"Cannot list the runs in {paths.runs_dir()}: {exc}")
        return []


def training_data_caption(info: runs.RunInfo, root: Path, infos: list[runs.RunInfo]) -> None:
    """Which data a checkpoint learned from, with citation and terms; a hint when it does not suit the active data."""
    data = info.training_data
    st.caption(f"**Trained on:** {data['name']}. {data.get('description', '')} "
               + (f"Cite: {data['citation']} " if data.get("citation") else "")
               + (f"Terms: {data['terms']}" if data.get("terms") else ""))
    suggested = runs.suggested_checkpoint(infos, demo_active=is_demo(root), model=info.model)
    if info.shipped and suggested is not None and suggested.name != info.name:
        where = "the demo cohort" if is_demo(root) else "real scans"
        st.info(f"For {where}, the shipped checkpoint **{suggested.name}** ({suggested.training_data['name']}) suits better.")


def run_label(v: jobs.RunView) -> str:
    """'<name> · <model> · <state>', the name the user gave the run (with its folder) when it has one, and its tags."""
    tag = "shipped" if v.info.shipped else v.label
    name = f"{v.name} ({v.info.name})" if v.name != v.info.name else v.info.name
    tags = f" · #{' #'.join(v.tags)}" if v.tags else ""
    return f"{name} · {v.info.model} · {tag}{tags}"


# -- checkpoints and scoring (Explore) ------------------------------------------------------------------
def checkpoint_stamp(run_dir: Path) -> tuple:
    """Changes when the checkpoint is rewritten (a new best epoch): part of every cache key."""
    from uad import checkpoints

    folder = checkpoints.resolve(run_dir)
    out = []
    for name in (checkpoints.META, checkpoints.WEIGHTS):
        try:
            s = (folder / name).stat()
            out.append((str(folder / name), s.st_size, s.st_mtime_ns))
        except OSError:
            out.append((str(folder / name), -1, -1))
    return tuple(out)


@st.cache_resource(show_spinner=False, max_entries=4)
def load_checkpoint(run_dir: str, stamp: tuple):
    from uad import checkpoints

    return checkpoints.load(run_dir)


@st.cache_resource(show_spinner=False, max_entries=6)
def prepare_case(root: str, case_id: str, preprocess_key: tuple, stamp: tuple) -> WorkingCase:
    """``uad.data.store.load_working_case``, kept per case, config and files (``stamp`` changes with them)."""
    from uad.data.preprocess import PreprocessConfig
    from uad.data.store import load_working_case

    # The app's cached discovery spares a folder scan; a case gone since then is looked up (and reported) by uad.
    return load_working_case(root, find_case(Path(root), case_id) or case_id, PreprocessConfig.from_dict(dict(preprocess_key)))


@st.cache_resource(show_spinner=False, max_entries=6)
def score_case(run_dir: str, ckpt_stamp: tuple, root: str, case_id: str, case_stamp: tuple):
    """Anomaly maps of a whole case, computed once per (checkpoint, case) and kept for the slider."""
    from uad import score

    ckpt = load_checkpoint(run_dir, ckpt_stamp)
    prep = prepare_case(root, case_id, freeze(ckpt.preprocess.to_dict()), case_stamp)
    vs = score.score_case(score.ModelScorer(ckpt.model, keep_reconstruction=True), prep, score.PostprocessConfig())
    return prep, vs


def freeze(d: dict) -> tuple:
    """A hashable, order-independent cache key for a config dict (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


# -- evaluation results (Compare, Explore; read and shaped by uad.report) ----------------------------------
def _stamp(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=32)
def _read_eval(folder: str, stamp: float) -> dict:
    from uad import report

    return report.load_evaluation(folder)


def read_eval(summary: report.EvaluationSummary) -> dict:
    """An evaluation's curves and labelled slices (``uad.report.load_evaluation``), cached until it is rewritten."""
    folder = summary.folder or Path(".")
    return _read_eval(str(folder), _stamp(folder / "metrics.json"))


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "–" if not np.isfinite(f) else f"{f:.{digits}f}"


def fmt_ci(v, ci: dict | None) -> str:
    if v is None:
        return "–"
    if ci and ci.get("low") is not None and ci.get("high") is not None:
        return f"{fmt(v)} [{fmt(ci['low'])}, {fmt(ci['high'])}]"
    return fmt(v)


def run_colours(names: list[str]) -> dict[str, str]:
    """A colour per run that does not depend on which runs are selected or in what order: by the run's
    place among all runs sorted by name (timestamped names sort by creation, so a new run takes the next
    colour and leaves the others alone)."""
    return {n: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, n in enumerate(sorted(set(names)))}


# -- plotly figures on the page: every one downloadable ----------------------------------------------------
FIGURE_FORMATS = ("png", "svg")


def plot_config(name: str) -> dict:
    """Plotly config for a figure: its toolbar's camera button downloads it, client-side (works offline), as
    PNG (2x) or SVG, whichever is chosen in the sidebar (``figure_format_control``)."""
    fmt_ = st.session_state.get("figure_format") or "png"
    return {"displaylogo": False, "toImageButtonOptions": {"format": fmt_, "filename": name.replace("::", "-"),
                                                           "scale": 2 if fmt_ == "png" else 1}}


def plot(fig: go.Figure, key: str, **kwargs):
    """``st.plotly_chart`` for every figure in the app: full width, with the download button configured.
    Extra keyword arguments (e.g. ``on_select``) go to st.plotly_chart."""
    kwargs.setdefault("width", "stretch")
    return st.plotly_chart(fig, key=key, config=plot_config(key), **kwargs)


def figure_format_control() -> None:
    """The sidebar choice of the format the figures' camera buttons download."""
    st.sidebar.segmented_control("Figure downloads", FIGURE_FORMATS, key="figure_format", default="png",
                                 format_func=str.upper, help="The camera button in each chart's toolbar (top right, on "
                                 "hover) downloads the chart in this format. Made in the browser: works offline.")


class timed:
    """Records how long a block took (ms) in ``st.session_state['perf'][name]``: the server-side latency
    of a view, read by the tests; printed to stderr when UAD_APP_TIMINGS is set."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        ms = (time.perf_counter() - self.t0) * 1000
        st.session_state.setdefault("perf", {}).setdefault(self.name, []).append(ms)
        if os.environ.get("UAD_APP_TIMINGS"):  # `UAD_APP_TIMINGS=1 streamlit run app/Home.py` logs them
            print(f"[uad-app] {self.name}: {ms:.0f} ms", file=sys.stderr, flush=True)
        return False


def page_header(title: str, caption: str | None = None) -> None:
    st.title(title)
    if caption:
        st.caption(caption)


WARM_UP_DELAY_S = 1.5


@st.cache_resource(show_spinner=False)
def warm_up() -> None:
    """Import torch and the models in the background once, so the first visit to Train/Explore is quick."""
    import threading

    def work() -> None:
        try:
            import uad.checkpoints  # noqa: F401
            import uad.score  # noqa: F401

            # plotly imports a validator module per attribute on first use (~0.5 s): do it now, not on a slider move.
            go.Figure(data=[go.Scatter(x=[0], y=[0], line=dict(color="#fff")), go.Bar(x=[0], y=[0], marker_color="#fff"),
                            go.Histogram(x=[0], xbins=dict(start=0, end=1, size=1))],
                      layout=layout(100, shapes=[vline(0)], barmode="stack", yaxis2=dict(overlaying="y"))).to_dict()
        except Exception:  # noqa: BLE001 - a failed warm-up only costs time later
            pass

    # Started a moment later: importing torch holds the GIL for about a second, and doing it while the
    # server is still sending the first page delayed that page by as much (first render 4.3 s -> see README).
    timer = threading.Timer(WARM_UP_DELAY_S, work)
    timer.daemon = True
    timer.name = "uad-warm-up"
    timer.start()
