"""Shared view helpers for the app: dataset state, colours, plotly figures, run processes (slices: viewer.py).

The app holds no science of its own: everything computed here comes from ``uad`` (loading, scoring,
metrics); this module only caches it, turns it into pictures and starts/stops ``python -m uad``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from uad import jobs, paths, report, runs
from uad.data import labels as seg_labels
from uad.data.cases import Case, discover_cases
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
# One colour per tumour sub-region, whatever label value its convention gives it (uad.data.labels).
REGION_COLOURS = {seg_labels.NECROTIC: (213, 94, 0), seg_labels.OEDEMA: (240, 228, 66), seg_labels.ENHANCING: (86, 180, 233),
                  seg_labels.NON_ENHANCING: (0, 158, 115)}
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


def case_key(page: str, root: str | Path) -> str:
    """Session key of a page's case box, one per dataset folder: a box never shows a case of another folder
    (a widget reused across folders kept its old value while the images were another folder's case)."""
    return f"{page}_case::{Path(root).resolve()}"


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


def seg_convention(labels_present) -> tuple[str, dict[int, str]]:
    """Which BraTS label convention a segmentation uses (``uad.data.labels``): its description and names."""
    conv = seg_labels.convention(labels_present)
    return conv.description, conv.names


def seg_colour(value: int, present) -> tuple[int, int, int]:
    """The colour of a sub-region, by the name its convention gives the label value."""
    return REGION_COLOURS.get(seg_labels.region(value, present) or "", (200, 200, 200))


# -- display volumes (Data page) ------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=3)  # resource: no 30 MB pickle copy per call
def load_display_case(root: str, case_id: str, stamp: tuple):
    """``viewer.load_display_case`` of a case of ``root``, kept per case and files (``stamp``); None when gone."""
    import viewer

    case = find_case(Path(root), case_id)
    return None if case is None else viewer.load_display_case(case)


# -- figures -------------------------------------------------------------------------------------------
# Built in one constructor call with plain dicts and no plotly template (Streamlit's theme styles them):
# plotly's per-call validation and template copies cost tens of ms, which a slider cannot afford.
def layout(height: int, **kw) -> dict:
    return dict(height=height, margin=dict(l=10, r=10, t=30, b=10), template="none",
                legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0), **kw)


def vline(x: float, colour: str = "#FFFFFF", width: int = 2, dash: str = "solid") -> dict:
    return dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=dict(color=colour, width=width, dash=dash))


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
