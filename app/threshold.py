"""Compare's slice-level operating points, drawn in the browser: one threshold per model with its precision,
recall, F1, specificity and confusion matrix, the slice-level ROC and PR curves with each model's operating
point, and each model's score distribution with its threshold. Moving a threshold never reruns Python.

``threshold_frontend/`` is a Streamlit component (components.v1: a static ``index.html`` + ``threshold.js``, no
build step, nothing from a network). It receives each evaluation's labelled slices (slices.csv: labels as
uint8, scores as little-endian float64, the exact values uad reads) and counts, at a threshold, the slices at
or above it, as ``uad.evaluation.metrics.operating_point`` does (a slice is called tumour when
``score >= threshold``); tests/test_browser.py checks both give the same counts and rates. What is drawn comes
from ``uad.evaluation.figures`` (``curve_spec``, ``distribution_spec``, ``CHART_CHROME``: the same lines,
bins and colours as the HTML report); this module only hands it over.

The thresholds the user sets live in the browser tab (sessionStorage, per dataset, split and run), so they
survive reruns and page changes without a round trip to the server.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import viewer

from uad.evaluation import figures

FRONTEND = Path(__file__).resolve().parent / "threshold_frontend"

def component():
    return viewer.declared("uad_thresholds", FRONTEND)


@dataclass
class Model:
    """One model's evaluation as the component draws it."""

    id: str  # the run's folder name: unique, the key of its threshold
    label: str  # what the user reads (shown as text)
    colour: str
    labels: np.ndarray  # (N,) 0/1: tumour slice
    scores: np.ndarray  # (N,) float64 slice scores
    curves: dict[str, Any]  # the model's curves.json entry (slice_roc, slice_pr, ...)
    presets: list[tuple[str, float]]  # (name, threshold): where the threshold can be put with one click
    start: float  # the threshold shown first (until the user moves it)


def presets(raw: dict[str, Any]) -> list[tuple[str, float]]:
    """The slice thresholds an evaluation recorded (chosen on its labels: oracle operating points), by name."""
    out = []
    for key, name in (("slice_youden", "Youden's J"), ("slice_best_f1", "best F1")):
        t = raw.get(key)
        thr = t.get("threshold") if isinstance(t, dict) else None
        if isinstance(thr, (int, float)) and not isinstance(thr, bool) and np.isfinite(thr):
            out.append((name, float(thr)))
    return out


def build(models: list[Model], baselines: list[tuple[str, dict[str, Any]]], where: str, storage_key: str,
          style: str = "app") -> tuple[dict[str, Any], dict[str, bytes]]:
    """The component's JSON spec and its byte arguments (labels and scores per model)."""
    series = [figures.CurveSeries(m.label, m.curves, m.colour) for m in models]
    runs = "+".join(m.id for m in models)
    spec: dict[str, Any] = {
        "where": where, "storage_key": storage_key, "style": style, "chrome": figures.CHART_CHROME,
        "curves": {kind: figures.curve_spec(kind, "slice", series, baselines) for kind in ("roc", "pr")},
        "files": {kind: figures.file_stem(figures.curve_title(kind, "slice"), where, runs) for kind in ("roc", "pr")},
        "models": [],
    }
    payload: dict[str, bytes] = {}
    for i, m in enumerate(models):
        labels = np.asarray(m.labels).astype(np.uint8).ravel()
        scores = np.asarray(m.scores, dtype="<f8").ravel()
        if labels.shape != scores.shape or not np.all(np.isfinite(scores)) or not np.all(labels <= 1):
            raise ValueError(f"{m.id}: labels and scores must be as many, 0/1 and finite")
        payload[f"l{i}"], payload[f"s{i}"] = labels.tobytes(), scores.tobytes()
        spec["models"].append({
            "id": m.id, "label": m.label, "colour": m.colour, "n": int(labels.size), "labels": f"l{i}", "scores": f"s{i}",
            "presets": [{"name": n, "threshold": t} for n, t in m.presets], "start": float(m.start),
            "distribution": figures.distribution_spec(scores[labels == 0], scores[labels == 1], m.colour),
            "file": figures.file_stem("slice-score distribution", where, m.id),
        })
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode())
    for k in sorted(payload):
        digest.update(payload[k])
    spec["version"] = digest.hexdigest()[:16]
    return spec, payload


def show(models: list[Model], baselines: list[tuple[str, dict[str, Any]]], where: str, storage_key: str, key: str,
         style: str = "app") -> None:
    """Draw the operating-point explorer (see the module's docstring)."""
    spec, payload = build(models, baselines, where, storage_key, style)
    component()(spec=spec, key=key, default=None, **payload)
