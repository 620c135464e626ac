"""Figures and colours shared by the app and the HTML report, so the two cannot drift: ROC / PR curves with the
baselines, score distributions, the colour tables of heatmaps and predictions.

Plotly figures are built from plain dicts (no per-call validation beyond the constructor), themed for the
app (``theme="app"``: transparent, Streamlit styles it) or for a document and downloads (``"light"``).
"""

from __future__ import annotations

import html
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


def plot_text(value: Any) -> str:
    """A trace name, title or hover text from a user or a file, as its characters: plotly renders a subset of HTML
    (links among it) there, and shows entities as the characters they stand for."""
    return html.escape(str(value), quote=False)


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


def layout(height: int, theme: str = "app", title: str | None = None, **kw) -> dict:
    """Plot layout: ``app`` leaves styling to Streamlit's theme; ``light`` is a white document style whose
    downloads keep their title on a light background."""
    base = dict(height=height, legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    if theme == "light":
        base.update(template="plotly_white", paper_bgcolor="white", plot_bgcolor="white",
                    margin=dict(l=55, r=15, t=60 if title else 30, b=45))
    else:
        base.update(template="none", margin=dict(l=10, r=10, t=40 if title else 30, b=10))
    if title:
        base["title"] = dict(text=plot_text(title), x=0.01, xanchor="left")
        base["legend"] = dict(orientation="h", yanchor="top", y=-0.18, x=0)
    return base | kw


def curve_figure(kind: str, level: str, series: list[CurveSeries], baselines: list[tuple[str, dict[str, Any]]],
                 theme: str = "app", title: str | None = None, height: int = 380):
    """ROC (``kind='roc'``) or PR (``'pr'``) curves at ``level`` ('slice' or 'pixel'): each method solid in its
    colour (with its operating point as a dot when given), each group of baselines dashed/dotted in grey.

    ``baselines``: (label suffix, curves) per group of evaluations scored on the same slices; with one
    group the suffix is empty."""
    import plotly.graph_objects as go

    key = f"{level}_{kind}"
    (xk, xtitle), (yk, ytitle) = CURVE_AXES[kind]
    data = []
    if kind == "roc":
        data.append(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999999", width=1), showlegend=False,
                               hoverinfo="skip"))
    for suffix, curves in baselines:
        for b, (name, colour, dash) in BASELINE_STYLE.items():
            c = (curves.get(b) or {}).get(key)
            if c:
                data.append(go.Scatter(x=c[xk], y=c[yk], mode="lines", name=plot_text(name + (f" ({suffix})" if suffix else "")),
                                       line=dict(color=colour, dash=dash, width=1.5)))
    for s in series:
        c = (s.curves or {}).get(key)
        if c:
            data.append(go.Scatter(x=c[xk], y=c[yk], mode="lines", name=plot_text(s.name), line=dict(color=s.colour, width=2.5)))
        p = s.point
        if p:
            x, y = (p.get("fpr"), p.get("recall")) if kind == "roc" else (p.get("recall"), p.get("precision"))
            if x is not None and y is not None and np.isfinite(x) and np.isfinite(y):
                data.append(go.Scatter(x=[x], y=[y], mode="markers", showlegend=False, name=plot_text(f"{s.name} operating point"),
                                       marker=dict(color=s.colour, size=13, line=dict(color="white", width=2))))
    return go.Figure(data=data, layout=layout(height, theme, title, xaxis=dict(title=dict(text=xtitle), range=[0, 1]),
                                              yaxis=dict(title=dict(text=ytitle), range=[0, 1.02])))


def curve_title(kind: str, level: str) -> str:
    return f"{level}-level {CURVE_NAMES[kind]}"


def distribution_figure(scores_healthy: np.ndarray, scores_tumour: np.ndarray, threshold: float | None, colour: str,
                        theme: str = "app", title: str | None = None, height: int = 230):
    """Histograms of healthy and tumour slice scores (40 bins over their range), the threshold as a dashed line."""
    import plotly.graph_objects as go

    both = np.concatenate([scores_healthy, scores_tumour]) if len(scores_healthy) + len(scores_tumour) else np.zeros(1)
    lo, hi = float(both.min()), float(both.max()) + 1e-9
    bins = dict(start=lo, end=hi, size=(hi - lo) / 40)
    data = [go.Histogram(x=np.asarray(v), name=name, marker_color=c, opacity=0.65, xbins=bins)
            for v, name, c in ((scores_healthy, "healthy slices", "#AAAAAA"), (scores_tumour, "tumour slices", colour))]
    shapes = [] if threshold is None else [dict(type="line", x0=threshold, x1=threshold, y0=0, y1=1, yref="paper",
                                                line=dict(color="#888888", width=2, dash="dash"))]
    return go.Figure(data=data, layout=layout(height, theme, title, barmode="overlay", shapes=shapes,
                                              xaxis=dict(title=dict(text="slice score")), yaxis=dict(title=dict(text="slices"))))
