"""Drawing helpers shared by the pages: colours, plotly figures, number formatting, captions, timing.

The app holds no science of its own: what it shows comes from ``uad``; what it keeps between reruns is in
``state.py``; the slice viewer is ``viewer.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import state
import streamlit as st
from safe import md

from uad.data import labels as seg_labels
from uad.evaluation import figures
from uad.evaluation.figures import (  # noqa: F401  (the pages' palette)
    BASELINE_STYLE,
    GT_CONTOUR,
    MODEL_COLOURS,
    PRED_COLOURS,
)
from uad.jobs import run_jobs
from uad.runs import listing

# -- colours: uad's palette (uad.evaluation.figures, shared with the HTML report), and the Data page's regions ----------
INFERNO = figures.inferno()  # perceptual, dark→bright; reads as "more anomalous = brighter"
# One colour per tumour sub-region, whatever label value its convention gives it (uad.data.labels).
REGION_COLOURS = {seg_labels.NECROTIC: (213, 94, 0), seg_labels.OEDEMA: (240, 228, 66), seg_labels.ENHANCING: (86, 180, 233),
                  seg_labels.NON_ENHANCING: (0, 158, 115)}


def seg_convention(labels_present) -> tuple[str, dict[int, str]]:
    """Which BraTS label convention a segmentation uses (``uad.data.labels``): its description and names."""
    conv = seg_labels.convention(labels_present)
    return conv.description, conv.names


def seg_colour(value: int, present) -> tuple[int, int, int]:
    """The colour of a sub-region, by the name its convention gives the label value."""
    return REGION_COLOURS.get(seg_labels.region(value, present) or "", (200, 200, 200))


# -- figures -------------------------------------------------------------------------------------------
# Built in one constructor call with plain dicts and no plotly template (Streamlit's theme styles them):
# plotly's per-call validation and template copies cost tens of ms, which a slider cannot afford.
def layout(height: int, **kw) -> dict:
    return figures.layout(height, "app", **kw)


def vline(x: float, colour: str = "#FFFFFF", width: int = 2, dash: str = "solid") -> dict:
    return dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=dict(color=colour, width=width, dash=dash))


def training_data_caption(info: listing.RunInfo, root: Path, infos: list[listing.RunInfo]) -> None:
    """Which data a checkpoint learned from, with citation and terms; a hint when it does not suit the active data."""
    data = info.training_data
    st.caption(f"**Trained on:** {md(data['name'])}. {md(data.get('description', ''))} "
               + (f"Cite: {md(data['citation'])} " if data.get("citation") else "")
               + (f"Terms: {md(data['terms'])}" if data.get("terms") else ""))
    suggested = listing.suggested_checkpoint(infos, demo_active=state.is_demo(root), model=info.model)
    if info.shipped and suggested is not None and suggested.name != info.name:
        where = "the demo cohort" if state.is_demo(root) else "real scans"
        st.info(f"For {where}, the shipped checkpoint **{md(suggested.name)}** ({md(suggested.training_data['name'])}) suits better.")


def run_label(v: run_jobs.RunView) -> str:
    """'<name> · <model> · <state>', the name the user gave the run (with its folder) when it has one, and its tags.
    Plain text (for select boxes): wrap it in ``safe.md`` wherever Markdown is rendered."""
    tag = "shipped" if v.info.shipped else v.label
    name = f"{v.name} ({v.info.name})" if v.name != v.info.name else v.info.name
    tags = f" · #{' #'.join(v.tags)}" if v.tags else ""
    return f"{name} · {v.info.model} · {tag}{tags}"


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "–" if not np.isfinite(f) else f"{f:.{digits}f}"


def run_colours(names: list[str]) -> dict[str, str]:
    """A colour per run that does not depend on which runs are selected or in what order: by the run's
    place among all runs sorted by name (timestamped names sort by creation, so a new run takes the next
    colour and leaves the others alone)."""
    return {n: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, n in enumerate(sorted(set(names)))}


# -- plotly figures on the page: every one downloadable ----------------------------------------------------
FIGURE_FORMATS = ("png", "svg")
FIGURE_STYLES = {"app": "App", "light": "Light"}  # how charts are drawn, on screen and in downloads


def figure_style() -> str:
    """'light' (white, dark text: for documents) when chosen in the sidebar, else 'app' (Streamlit's theme)."""
    return "light" if st.session_state.get("figure_style") == "light" else "app"


def plot_config(name: str) -> dict:
    """Plotly config for a figure: its toolbar's camera button downloads it, client-side (works offline), as
    PNG (2x) or SVG, whichever is chosen in the sidebar (``figure_format_control``), named ``name``."""
    fmt_ = st.session_state.get("figure_format") or "png"
    return {"displaylogo": False, "toImageButtonOptions": {"format": fmt_, "filename": figures.file_stem(name),
                                                           "scale": 2 if fmt_ == "png" else 1}}


def plot(fig: go.Figure, key: str, name: str | None = None, **kwargs):
    """``st.plotly_chart`` for every figure in the app: full width, in the chosen style, with the download button
    configured. A download is the chart as drawn (its title names the run and the data), in a file called
    ``name`` (what it shows: title, run, dataset; ``figures.file_stem``), else ``key``. Extra keyword arguments
    (e.g. ``on_select``) go to st.plotly_chart."""
    kwargs.setdefault("width", "stretch")
    if figure_style() == "light":
        figures.restyle(fig, "light")
        kwargs.setdefault("theme", None)  # Streamlit's theme would paint it dark again
    return st.plotly_chart(fig, key=key, config=plot_config(name or key), **kwargs)


def figure_format_control() -> None:
    """The sidebar choices of how charts are drawn and what their camera buttons download."""
    st.sidebar.segmented_control("Figure downloads", FIGURE_FORMATS, key="figure_format", default="png",
                                 format_func=str.upper, help="The camera button in each chart's toolbar (top right, on "
                                 "hover) downloads the chart in this format, titled with its run and data. Made in "
                                 "the browser: works offline.")
    st.sidebar.segmented_control("Chart style", list(FIGURE_STYLES), key="figure_style", default="app",
                                 format_func=FIGURE_STYLES.get, help="App: the app's theme. Light: white background and "
                                 "dark text, on screen and in downloads (for papers and slides).")


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
            from streamlit import string_util

            import uad.checkpoints.weights  # noqa: F401
            import uad.scoring.cache  # noqa: F401
            import uad.scoring.maps  # noqa: F401

            # Streamlit loads its emoji catalogue and compiles its pattern (~0.3 s) the first time a message
            # with a non-ASCII character is drawn (Explore's "Computing the anomaly maps of …" notice): now.
            string_util.extract_leading_emoji("…")

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


PREFETCH_ENV = "UAD_APP_PREFETCH"  # "0": Explore computes its opening view only when visited


@st.cache_resource(show_spinner=False, max_entries=16)
def prefetch_explore(root: str, demo_active: bool, ready: bool) -> None:
    """Once per dataset folder (and once more when the demo cohort has just been generated: ``ready``): compute
    Explore's opening view on ``root`` in the background (``uad.jobs.prefetch``), so the first visit reads it."""
    import threading

    if not ready or os.environ.get(PREFETCH_ENV) == "0":
        return

    def work() -> None:
        from uad.jobs import prefetch

        prefetch.explore_opening(root, demo_active)

    timer = threading.Timer(WARM_UP_DELAY_S, work)  # after the warm-up's imports have started, not before the page
    timer.daemon = True
    timer.name = "uad-prefetch"
    timer.start()


def viewer_place(key: str, shown: tuple, notice: str):
    """Where a page draws its viewer, and whether ``shown`` (what it will show) is new. While another case or run
    loads, a notice stands there instead of the previous one's images under the new name; otherwise a plain
    container, so the viewer's frame (and the volumes it holds) stays: an st.empty written on every run would
    replace it each time. The page stores ``shown`` under ``key`` once drawn."""
    if st.session_state.get(key) != shown:
        slot = st.empty()
        slot.info(md(notice))
        return slot.container, True
    box = st.container()
    return (lambda: box), False
