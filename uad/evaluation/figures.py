"""Figures and colours shared by the app and the HTML report, so the two cannot drift: ROC / PR curves with the
baselines, score distributions, the colour tables of heatmaps and predictions.

Plotly figures are built from plain dicts (no per-call validation beyond the constructor), themed for the
app (``theme="app"``: transparent, Streamlit styles it) or for a document and downloads (``"light"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from uad.evaluation.summaries import BASELINE_LABELS

# Okabe–Ito colours: distinguishable with the common colour-vision deficiencies and on a grey image.
MODEL_COLOURS = ["#56B4E9", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#F0E442", "#0072B2"]
PRED_COLOURS = {"TP": (240, 228, 66), "FP": (204, 121, 167), "FN": (86, 180, 233)}  # detected, false alarm, missed
GT_CONTOUR = (0, 255, 255)  # cyan: the ground-truth tumour outline, on top of every heatmap
# name, colour, dash: the intensity baseline darker than brain area on both light and dark backgrounds
BASELINE_STYLE = {"intensity": (BASELINE_LABELS["intensity"], "#8C8C8C", "dash"),
                  "brain_area": (BASELINE_LABELS["brain_area"], "#BDBDBD", "dot")}
PRED_LEGEND = [(GT_CONTOUR, "tumour outline"), (PRED_COLOURS["TP"], "detected tumour (TP)"),
               (PRED_COLOURS["FP"], "false alarm (FP)"), (PRED_COLOURS["FN"], "missed tumour (FN)")]

CURVE_AXES = {"roc": (("fpr", "false-positive rate"), ("tpr", "true-positive rate (recall)")),
              "pr": (("recall", "recall"), ("precision", "precision"))}
CURVE_NAMES = {"roc": "ROC", "pr": "precision-recall"}


def colour_table(hex_colours: list[str]) -> np.ndarray:
    """256-entry RGB lookup table interpolated from a list of '#rrggbb' stops (no matplotlib needed)."""
    stops = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in hex_colours], np.float32)
    x, t = np.linspace(0, 1, len(stops)), np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, stops[:, c]) for c in range(3)], axis=1).astype(np.uint8)


def inferno() -> np.ndarray:
    """The heatmaps' colour table: perceptual, dark → bright (more anomalous = brighter)."""
    import plotly.colors as pc

    return colour_table(pc.sequential.Inferno)


@dataclass
class CurveSeries:
    """One method's curves (``curves.json`` of an evaluation: {"slice_roc": {...}, "pixel_pr": ...}) as drawn."""

    name: str
    curves: dict[str, Any]
    colour: str
    point: dict[str, float] | None = None  # an operating point {"fpr", "recall", "precision"} drawn as a dot


# The chart chrome (text, grid, background) per style: "dark"/"light" follow the app's theme on screen;
# "light" is also the document style downloads can take (white, dark text).
CHART_CHROME = {"dark": {"text": "#FAFAFA", "muted": "#A3A8B8", "grid": "rgba(250,250,250,0.14)", "background": "#0E1117"},
                "light": {"text": "#262730", "muted": "#5F6368", "grid": "#E5E5E5", "background": "#FFFFFF"}}
HEALTHY_COLOUR = "#AAAAAA"  # healthy slices in score distributions
THRESHOLD_STYLE = ("#888888", "dash")  # a threshold drawn over a distribution
VALIDATION_COLOUR = "#DDDDDD"  # the validation loss (on a light background: THRESHOLD_STYLE's grey)
DASHES = ("solid", "dash", "dot")  # plotly's names; the browser's charts draw the same three


def text(value: Any) -> str:
    """A string from a user or a file as plotly shows it: plotly reads tags (<a>, <b>, <br>) in titles, legends
    and hover labels, so every such string is escaped here (plotly shows the entities as the characters)."""
    import html

    return html.escape(str(value), quote=False)


def layout(height: int, theme: str = "app", title: str | None = None, subtitle: str | None = None, **kw) -> dict:
    """Plot layout: ``app`` leaves styling to Streamlit's theme; ``light`` is a white document style whose
    downloads keep their title on a light background. ``subtitle`` (under the title) names what produced it."""
    base = dict(height=height, legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    if theme == "light":
        chrome = CHART_CHROME["light"]
        base.update(template="plotly_white", paper_bgcolor=chrome["background"], plot_bgcolor=chrome["background"],
                    font=dict(color=chrome["text"]), margin=dict(l=55, r=15, t=(75 if subtitle else 60) if title else 30, b=45))
    else:
        base.update(template="none", margin=dict(l=10, r=10, t=(70 if subtitle else 45) if title else 30, b=10))
    if title:
        base["title"] = dict(text=text(title), x=0.01, xanchor="left", font=dict(size=15))
        if subtitle:
            base["title"]["subtitle"] = dict(text=text(subtitle), font=dict(size=12))
        # Below the plot, at the figure's foot: plotly makes room for it, so it never covers the x-axis title.
        base["legend"] = dict(orientation="h", yref="container", yanchor="bottom", y=0, x=0)
    return base | kw


def restyle(fig, theme: str):
    """``fig`` in another style (``light``: white background, dark text), keeping its title and size."""
    had_title = bool(fig.layout.title and fig.layout.title.text)
    has_sub = had_title and bool(fig.layout.title.subtitle and fig.layout.title.subtitle.text)
    base = layout(fig.layout.height or 300, theme, "t" if had_title else None, "s" if has_sub else None)
    for k in ("title", "xaxis", "yaxis", "shapes", "barmode", "yaxis2", "yaxis3", "legend"):
        base.pop(k, None)  # the figure keeps its own (already escaped) title, axes and legend
    fig.update_layout(**base)
    if theme == "light":
        fig.update_xaxes(gridcolor=CHART_CHROME["light"]["grid"], zerolinecolor=CHART_CHROME["light"]["grid"])
        fig.update_yaxes(gridcolor=CHART_CHROME["light"]["grid"], zerolinecolor=CHART_CHROME["light"]["grid"])
    return fig


def file_stem(*parts: str | None) -> str:
    """A download's file name (no extension) from what the chart shows: 'slice-level-ROC_demo-cohort-test-split_ae'."""
    import re

    words = [re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(p)).strip("-.") for p in parts if p]
    return "_".join(w for w in words if w)[:150] or "chart"


def curve_spec(kind: str, level: str, series: list[CurveSeries], baselines: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A ROC (``kind='roc'``) or PR (``'pr'``) chart at ``level`` ('slice' or 'pixel') as plain data: its axes and
    lines (baselines dashed/dotted in grey, each method solid in its colour, with the thresholds along its curve).
    ``curve_figure`` draws it with plotly; the app's threshold component draws the same data in the browser.

    ``baselines``: (label suffix, curves) per group of evaluations scored on the same slices; with one
    group the suffix is empty."""
    key = f"{level}_{kind}"
    (xk, xtitle), (yk, ytitle) = CURVE_AXES[kind]
    lines = []
    for suffix, curves in baselines:
        for b, (name, colour, dash) in BASELINE_STYLE.items():
            c = (curves.get(b) or {}).get(key)
            if c:
                lines.append({"name": name + (f" ({suffix})" if suffix else ""), "colour": colour, "dash": dash, "width": 1.5,
                              "x": list(c[xk]), "y": list(c[yk]), "method": None})
    for i, s in enumerate(series):
        c = (s.curves or {}).get(key)
        if c:
            lines.append({"name": s.name, "colour": s.colour, "dash": "solid", "width": 2.5, "x": list(c[xk]), "y": list(c[yk]),
                          "thresholds": list(c.get("thresholds") or []), "method": i})
    return {"kind": kind, "level": level, "title": curve_title(kind, level), "diagonal": kind == "roc",
            "x": {"key": xk, "title": xtitle, "range": [0, 1]}, "y": {"key": yk, "title": ytitle, "range": [0, 1.02]},
            "lines": lines}


def curve_figure(kind: str, level: str, series: list[CurveSeries], baselines: list[tuple[str, dict[str, Any]]],
                 theme: str = "app", title: str | None = None, height: int = 380, subtitle: str | None = None):
    """``curve_spec`` drawn with plotly, each method's operating point (``CurveSeries.point``) as a dot."""
    import plotly.graph_objects as go

    spec = curve_spec(kind, level, series, baselines)
    data = []
    if spec["diagonal"]:
        data.append(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999999", width=1), showlegend=False,
                               hoverinfo="skip"))
    for line in spec["lines"]:
        data.append(go.Scatter(x=line["x"], y=line["y"], mode="lines", name=text(line["name"]),
                               line=dict(color=line["colour"], dash=line["dash"], width=line["width"])))
    for s in series:
        p = s.point
        if p:
            x, y = (p.get("fpr"), p.get("recall")) if kind == "roc" else (p.get("recall"), p.get("precision"))
            if x is not None and y is not None and np.isfinite(x) and np.isfinite(y):
                data.append(go.Scatter(x=[x], y=[y], mode="markers", showlegend=False, name=text(f"{s.name} operating point"),
                                       marker=dict(color=s.colour, size=13, line=dict(color="white", width=2))))
    return go.Figure(data=data, layout=layout(height, theme, title, subtitle,
                                              xaxis=dict(title=dict(text=spec["x"]["title"]), range=spec["x"]["range"]),
                                              yaxis=dict(title=dict(text=spec["y"]["title"]), range=spec["y"]["range"])))


def curve_title(kind: str, level: str) -> str:
    return f"{level}-level {CURVE_NAMES[kind]}"


DISTRIBUTION_BINS = 40


def distribution_spec(scores_healthy: np.ndarray, scores_tumour: np.ndarray, colour: str, bins: int = DISTRIBUTION_BINS) -> dict[str, Any]:
    """Histograms of healthy and tumour slice scores as plain data: ``bins`` equal bins over their range (the last
    bin holds its right edge), one count list per kind. Drawn by ``distribution_figure`` and the threshold component."""
    healthy, tumour = np.asarray(scores_healthy, np.float64), np.asarray(scores_tumour, np.float64)
    both = np.concatenate([healthy, tumour]) if healthy.size + tumour.size else np.zeros(1)
    lo, hi = float(both.min()), float(both.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, bins + 1)
    return {"edges": edges.tolist(), "x_title": "slice score", "y_title": "slices",
            "series": [{"name": "healthy slices", "colour": HEALTHY_COLOUR, "counts": np.histogram(healthy, edges)[0].tolist()},
                       {"name": "tumour slices", "colour": colour, "counts": np.histogram(tumour, edges)[0].tolist()}],
            "threshold": {"colour": THRESHOLD_STYLE[0], "dash": THRESHOLD_STYLE[1]}}


def distribution_figure(scores_healthy: np.ndarray, scores_tumour: np.ndarray, threshold: float | None, colour: str,
                        theme: str = "app", title: str | None = None, height: int = 230, subtitle: str | None = None):
    """``distribution_spec`` drawn with plotly (overlaid bars), the threshold as a dashed line."""
    import plotly.graph_objects as go

    spec = distribution_spec(scores_healthy, scores_tumour, colour)
    edges = np.asarray(spec["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    data = [go.Bar(x=centres, y=s["counts"], width=width, name=text(s["name"]), marker_color=s["colour"], opacity=0.65)
            for s in spec["series"]]
    shapes = [] if threshold is None else [dict(type="line", x0=threshold, x1=threshold, y0=0, y1=1, yref="paper",
                                                line=dict(color=THRESHOLD_STYLE[0], width=2, dash=THRESHOLD_STYLE[1]))]
    return go.Figure(data=data, layout=layout(height, theme, title, subtitle, barmode="overlay", bargap=0, shapes=shapes,
                                              xaxis=dict(title=dict(text=spec["x_title"])), yaxis=dict(title=dict(text=spec["y_title"]))))


# -- the training monitor -----------------------------------------------------------------------------------------
def _loss_axis(log_y: bool, title: str) -> dict:
    return dict(title=dict(text=title + (" (log)" if log_y else "")), type="log" if log_y else "linear")


def _epoch_axis(n_epochs: int) -> dict:
    return dict(title=dict(text="epoch"), dtick=1 if 1 < n_epochs < 15 else None)


def loss_figure(h, smoothing: float = 0.0, log_y: bool = False, theme: str = "app", title: str | None = None,
                subtitle: str | None = None, height: int = 380):
    """A run's losses on one epoch axis (``h``: a ``uad.runs.history.History``, each epoch once): every training
    loss every few steps (thin; with ``smoothing`` > 0 TensorBoard's smoothed line over a faint raw one) and per
    epoch (markers; a partial epoch hollow, where it stopped), and the validation loss per epoch."""
    import plotly.graph_objects as go

    from uad.runs.history import ema

    data = []
    epochs = [r for r in h.epochs]
    for i, k in enumerate(h.loss_keys):
        colour = MODEL_COLOURS[i % len(MODEL_COLOURS)]
        steps = [r for r in h.steps if k in r.train]
        if steps:
            x, y = [r.position for r in steps], [r.train[k] for r in steps]
            if smoothing > 0:
                data.append(go.Scatter(x=x, y=y, name=text(f"train {k} (steps, raw)"), mode="lines", showlegend=False,
                                       line=dict(color=colour, width=1), opacity=0.25, hoverinfo="skip"))
                y = ema(y, smoothing)
            data.append(go.Scatter(x=x, y=y, name=text(f"train {k} (steps" + (f", smoothed {smoothing:g})" if smoothing > 0 else ")")),
                                   mode="lines", line=dict(color=colour, width=1.5), opacity=0.9))
        with_k = [r for r in epochs if k in r.train]
        data.append(go.Scatter(x=[r.position for r in with_k], y=[r.train[k] for r in with_k], name=text(f"train {k} (epoch)"),
                               mode="markers" if steps else "lines+markers", line=dict(color=colour),
                               marker=dict(color=colour, size=8, symbol=["circle-open" if r.partial else "circle" for r in with_k])))
    val = [r for r in epochs if r.val_loss is not None]
    grey = THRESHOLD_STYLE[0] if theme == "light" else VALIDATION_COLOUR
    data.append(go.Scatter(x=[r.position for r in val], y=[r.val_loss for r in val], name="validation loss", mode="lines+markers",
                           line=dict(color=grey, dash="dash"),
                           marker=dict(color=grey, symbol=["circle-open" if r.partial else "circle" for r in val])))
    n = max((r.epoch for r in epochs), default=0)
    return go.Figure(data=data, layout=layout(height, theme, title, subtitle, xaxis=_epoch_axis(n), yaxis=_loss_axis(log_y, "loss")))


def overlay_figure(series: list[tuple[str, Any]], curve: str = "validation", smoothing: float = 0.0, log_y: bool = False,
                   theme: str = "app", title: str | None = None, subtitle: str | None = None, height: int = 380):
    """Several runs' loss curves on one epoch axis: ``series`` is (label, History) per run. ``curve="validation"``:
    the validation loss per epoch; ``"training"``: each run's main training loss every few steps where recorded
    (else per epoch), smoothed like ``loss_figure``."""
    import plotly.graph_objects as go

    from uad.runs.history import ema

    data = []
    for i, (label, h) in enumerate(series):
        colour = MODEL_COLOURS[i % len(MODEL_COLOURS)]
        if curve == "validation":
            val = [r for r in h.epochs if r.val_loss is not None]
            data.append(go.Scatter(x=[r.position for r in val], y=[r.val_loss for r in val], name=text(label), mode="lines+markers",
                                   line=dict(color=colour)))
            continue
        key = h.main_loss
        source = [r for r in (h.steps or h.epochs) if key in r.train]
        x, y = [r.position for r in source], [r.train[key] for r in source]
        if smoothing > 0 and h.steps:
            data.append(go.Scatter(x=x, y=y, mode="lines", showlegend=False, hoverinfo="skip", opacity=0.25,
                                   line=dict(color=colour, width=1), name=text(f"{label} ({key}, raw)")))
            y = ema(y, smoothing)
        data.append(go.Scatter(x=x, y=y, name=text(f"{label} ({key})"), mode="lines", line=dict(color=colour)))
    name = "validation loss" if curve == "validation" else "training loss"
    return go.Figure(data=data, layout=layout(height, theme, title, subtitle, xaxis=dict(title=dict(text="epoch")),
                                              yaxis=_loss_axis(log_y, name)))


def rates_figure(h, theme: str = "app", title: str | None = None, subtitle: str | None = None, height: int = 360):
    """Per epoch: the learning rate of each optimizer (log axis), training throughput (slices/s) and, when trained
    on a GPU, its peak memory, stacked on one epoch axis. Runs recorded before a quantity existed lack its panel."""
    import plotly.graph_objects as go

    panels = []
    if h.lr_keys:
        panels.append(("learning rate", "log", [(f"lr {k}" if len(h.lr_keys) > 1 else "learning rate",
                                                  [(r.position, r.lr.get(k)) for r in h.epochs if k in r.lr]) for k in h.lr_keys]))
    speed = [(r.position, r.slices_per_s) for r in h.epochs if r.slices_per_s is not None]
    if speed:
        panels.append(("slices/s", "linear", [("training slices/s", speed)]))
    if h.has_gpu_memory:
        panels.append(("GPU MB", "linear", [("peak GPU memory (MB)", [(r.position, r.gpu_memory_mb) for r in h.epochs
                                                                        if r.gpu_memory_mb is not None])]))
    data, axes = [], {}
    gap = 0.08
    size = (1 - gap * (len(panels) - 1)) / max(len(panels), 1)
    for i, (axis_title, kind, lines) in enumerate(panels):
        name = "y" if i == 0 else f"y{i + 1}"
        top = 1 - i * (size + gap)
        axes["yaxis" if i == 0 else f"yaxis{i + 1}"] = dict(domain=[max(top - size, 0), top], type=kind, anchor="x",
                                                            title=dict(text=axis_title))
        for j, (label, points) in enumerate(lines):
            colour = MODEL_COLOURS[(i + j) % len(MODEL_COLOURS)]
            data.append(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=text(label), mode="lines+markers",
                                   yaxis=name, line=dict(color=colour), marker=dict(size=6)))
    n = max((r.epoch for r in h.epochs), default=0)
    return go.Figure(data=data, layout=layout(height, theme, title, subtitle, xaxis=_epoch_axis(n), **axes))
