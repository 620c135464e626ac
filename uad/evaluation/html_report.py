"""A self-contained HTML report of one evaluation: readable offline, attachable to a paper draft.

One file, no outside references: plotly.js is inlined once (interactive ROC/PR curves, each downloadable
as PNG from its own toolbar), example slices are PNG data URIs. Contents: what was evaluated (run,
checkpoint, dataset, split, settings), the metrics table with intervals and both baselines, the
operating points at the calibrated healthy-FPR thresholds, the curves, the per-case table (sortable by
clicking a header), and input / anomaly map / prediction-vs-truth slices for the best and worst cases.

    python -m uad report --run RUN [--dataset ID|FOLDER] [--split SPLIT] --out report.html
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from uad.core import fileio
from uad.data import identity
from uad.evaluation import columns, summaries

MODEL_COLOUR = "#0072B2"
BASELINE_STYLE = {"intensity": ("#888888", "dash"), "brain_area": ("#BBBBBB", "dot")}
TP, FP, FN = (240, 228, 66), (204, 121, 167), (86, 180, 233)  # Okabe–Ito, as in the app
GT = (0, 255, 255)
EXAMPLE_PX = 256

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} th,td{padding:.3em .6em;border-bottom:1px solid #e4e4e4;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f4f4f4} .meta td{text-align:left} .meta td:first-child{color:#555}
.note{color:#555;font-size:.85em;max-width:60em} .grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.examples figure{display:inline-block;margin:0 .6em .6em 0;text-align:center;font-size:.8em;color:#444}
.examples img{width:220px;height:220px;image-rendering:pixelated;border:1px solid #ccc}
th.sortable{cursor:pointer} th.sortable:after{content:" \\2195";color:#aaa}
.swatch{display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;margin:0 .3em 0 .8em;border-radius:2px}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.classList.add('sortable');th.addEventListener('click',function(){
    var rows=[].slice.call(t.tBodies[0].rows), asc=th.dataset.asc!=='1'; th.dataset.asc=asc?'1':'0';
    rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].innerText, y=b.cells[i].dataset.v||b.cells[i].innerText;
      var nx=parseFloat(x), ny=parseFloat(y); if(!isNaN(nx)&&!isNaN(ny)) return asc?nx-ny:ny-nx;
      if(isNaN(nx)!==isNaN(ny)) return isNaN(nx)?1:-1; return asc?x.localeCompare(y):y.localeCompare(x);});
    rows.forEach(function(r){t.tBodies[0].appendChild(r);});});});});
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[Any]], cls: str = "", raw_values: list[list[Any]] | None = None) -> str:
    out = [f"<table class='{cls}'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        tds = []
        for j, c in enumerate(r):
            v = raw_values[i][j] if raw_values is not None else None
            attr = f" data-v='{_e(v)}'" if v is not None and v != "" else ""
            tds.append(f"<td{attr}>{_e(c)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    return "".join(out) + "</tbody></table>"


# -- figures ---------------------------------------------------------------------------------------------------
def _curve_figure(curves: dict[str, Any], model: str, level: str, kind: str):
    import plotly.graph_objects as go

    key = f"{level}_{kind}"
    xk, yk = ("fpr", "tpr") if kind == "roc" else ("recall", "precision")
    data = []
    if kind == "roc":
        data.append(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#cccccc", width=1), showlegend=False, hoverinfo="skip"))
    for b, (colour, dash) in BASELINE_STYLE.items():
        c = (curves.get(b) or {}).get(key)
        if c:
            data.append(go.Scatter(x=c[xk], y=c[yk], mode="lines", name=summaries.BASELINE_LABELS.get(b, b),
                                   line=dict(color=colour, dash=dash, width=1.5)))
    c = (curves.get(model) or {}).get(key)
    if c:
        data.append(go.Scatter(x=c[xk], y=c[yk], mode="lines", name=_e(model), line=dict(color=MODEL_COLOUR, width=2.5)))
    titles = ("false-positive rate", "true-positive rate") if kind == "roc" else ("recall", "precision")
    name = f"{level}-level {'ROC' if kind == 'roc' else 'precision-recall'}"
    return go.Figure(data=data, layout=dict(
        title=dict(text=name), height=380, margin=dict(l=50, r=10, t=40, b=45), template="plotly_white",
        xaxis=dict(title=dict(text=titles[0]), range=[0, 1]), yaxis=dict(title=dict(text=titles[1]), range=[0, 1.02]),
        legend=dict(orientation="h", yanchor="bottom", y=0.0, x=0.35 if kind == "roc" else 0.0))), name


def _figures_html(curves: dict[str, Any], model: str) -> str:
    parts, first = [], True
    for level in ("slice", "pixel"):
        for kind in ("roc", "pr"):
            fig, name = _curve_figure(curves, model, level, kind)
            if not fig.data:
                continue
            config = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2, "filename": name.replace(" ", "_")}}
            # plotly.js inlined once (the first figure), so the file works without a network.
            parts.append("<div>" + fig.to_html(full_html=False, include_plotlyjs=True if first else False, config=config) + "</div>")
            first = False
    return "<div class='grid'>" + "".join(parts) + "</div>" if parts else "<p class='note'>No curves were recorded.</p>"


# -- example slices --------------------------------------------------------------------------------------------
def _png(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _inferno() -> np.ndarray:
    import plotly.colors as pc

    stops = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in pc.sequential.Inferno], np.float32)
    x, t = np.linspace(0, 1, len(stops)), np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, stops[:, c]) for c in range(3)], axis=1).astype(np.uint8)


def _up(a: np.ndarray) -> np.ndarray:
    k = max(1, EXAMPLE_PX // a.shape[0])
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def _grey(img: np.ndarray) -> np.ndarray:
    g = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _blend(rgb: np.ndarray, mask: np.ndarray, colour, alpha: float) -> np.ndarray:
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out.astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask)


def _example_panels(image, heat, vmax, pred, truth) -> list[tuple[str, str]]:
    lut = _inferno()
    h = np.clip(heat / max(vmax, 1e-6), 0, 1)
    alpha = (0.85 * np.clip((h - 0.2) / 0.8, 0, 1) ** 0.6)[..., None]
    heat_rgb = (_grey(image) * (1 - alpha) + lut[(h * 255).astype(np.uint8)] * alpha).astype(np.uint8)
    heat_rgb = _up(heat_rgb)
    gt_line = _outline(_up(truth.astype(np.uint8)).astype(bool))
    heat_rgb[gt_line] = GT
    overlay = _grey(image)
    overlay = _blend(overlay, pred & truth, TP, 0.65)
    overlay = _blend(overlay, pred & ~truth, FP, 0.65)
    overlay = _blend(overlay, ~pred & truth, FN, 0.65)
    return [("input", _png(_up(_grey(image)))), ("anomaly map + tumour outline", _png(heat_rgb)),
            ("prediction vs truth", _png(_up(overlay)))]


def _examples_html(summary: summaries.EvaluationSummary, cases, run: str | Path | None, n_each: int = 1) -> str:
    """Best and worst labelled cases by Dice at the per-case threshold, scored again now with uad.score."""
    if cases is None or "dice" not in cases.columns:
        return "<p class='note'>Example slices need the per-case table (cases.csv), which this evaluation predates.</p>"
    ranked = cases[cases["dice"].notna()].sort_values("dice", ascending=False)
    if ranked.empty:
        return "<p class='note'>No labelled case with a defined Dice: no example slices.</p>"
    picks = [("best", r) for _, r in ranked.head(n_each).iterrows()]
    picks += [("worst", r) for _, r in ranked.tail(n_each).iloc[::-1].iterrows() if r.case_id not in {p[1].case_id for p in picks}]
    ckpt_path = Path(run) if run is not None else identity.repo_path(summary.raw.get("checkpoint", ""))
    root = summary.local_root
    if root is None or not root.is_dir():
        return f"<p class='note'>Example slices left out: the dataset folder {_e(root)} is not on this machine.</p>"
    try:
        from uad.checkpoints import weights as ckpt_weights
        from uad.data.store import load_working_case
        from uad.scoring.maps import score_case
        from uad.scoring.postprocess import threshold_maps
        from uad.scoring.recipe import PostprocessConfig
        from uad.scoring.scorers import ModelScorer

        ckpt = ckpt_weights.load(ckpt_path)
        scorer = ModelScorer(ckpt.model)
        post = PostprocessConfig.from_dict(summary.raw.get("postprocess") or {})
    except Exception as exc:  # noqa: BLE001 - a report without pictures is still a report
        return f"<p class='note'>Example slices left out: cannot load the checkpoint {_e(ckpt_path)} ({_e(exc)}).</p>"
    thr = summary.at_fpr(summaries.CASE_RATE).get("threshold")
    blocks = []
    for which, r in picks:
        try:
            case = load_working_case(root, str(r.case_id), ckpt.preprocess)
            vs = score_case(scorer, case, post)
        except Exception as exc:  # noqa: BLE001
            blocks.append(f"<p class='note'>{_e(r.case_id)}: cannot be scored now ({_e(exc)}).</p>")
            continue
        tumour = np.asarray(case.tumour)
        k = int(np.argmax(tumour.sum(axis=(1, 2))))
        inside = vs.maps[vs.mask]
        vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
        pred = (threshold_maps(vs.maps[k], thr, post.min_component) & vs.mask[k]) if thr is not None else np.zeros_like(tumour[k])
        panels = _example_panels(np.asarray(case.images[k, 0], np.float32), vs.maps[k], vmax, pred, tumour[k] & vs.mask[k])
        figs = "".join(f"<figure><img alt='{_e(cap)}' src='{src}'><figcaption>{_e(cap)}</figcaption></figure>" for cap, src in panels)
        blocks.append(f"<h3>{_e(which)} case: {_e(r.case_id)} · Dice {columns._fmt(r.dice)} · slice {int(case.slice_index[k])}</h3>"
                      f"<div class='examples'>{figs}</div>")
    legend = "".join(f"<span class='swatch' style='background:rgb{c}'></span>{t}" for c, t in
                     ((GT, "tumour outline"), (TP, "detected tumour (TP)"), (FP, "false alarm (FP)"), (FN, "missed tumour (FN)")))
    thr_text = f"{thr:.4f}" if isinstance(thr, (int, float)) else "–"
    return (f"<p class='note'>The axial slice with the most tumour of the best and worst case by Dice, at the "
            f"threshold {thr_text} (5% healthy FPR). Channel shown: {_e(ckpt.preprocess.modalities[0])}. {legend}</p>" + "".join(blocks))


# -- the document ---------------------------------------------------------------------------------------------
def build_report(summary: summaries.EvaluationSummary, run: str | Path | None = None, examples: bool = True) -> str:
    """The report's HTML (one string, no outside references)."""
    m = summary.raw
    title = f"{summary.model} · {m.get('run') or (Path(run).name if run else '')}".rstrip(" ·")
    curves = {}
    if summary.folder is not None and (summary.folder / "curves.json").is_file():
        try:
            curves = fileio.read_json(summary.folder / "curves.json")
        except (OSError, ValueError):
            curves = {}
    cases = summary.cases()
    pre, post, boot = summary.preprocess, m.get("postprocess") or {}, m.get("bootstrap") or {}
    meta = [
        ("run / checkpoint", m.get("checkpoint") or (str(run) if run else "–")),
        ("model", summary.model),
        ("dataset", f"{summary.dataset.label} · id {summary.dataset.id}"),
        ("dataset folder", summary.dataset.root or m.get("data_root") or "–"),
        ("split", f"{summaries.SPLIT_WORDS.get(summary.split, summary.split)} ({m.get('split_source', '?')})"),
        ("cases", f"{m.get('n_labelled_cases', '?')} labelled, {m.get('n_unlabelled_cases', 0)} unlabelled; "
                  f"{m.get('n_slices', '?')} labelled slices ({m.get('n_tumour_slices', '?')} with tumour)"),
        ("thresholds calibrated on", f"healthy slices of {len(m.get('calibration_cases') or [])} cases: "
                                     + ", ".join(m.get("calibration_cases") or []) or "–"),
        ("preprocessing", f"{summary.image_size} px, {'+'.join(summary.modalities)}, " + ", ".join(
            f"{k} {v}" for k, v in pre.items() if k not in ("image_size", "modalities"))),
        ("post-processing", ", ".join(f"{k} {v}" for k, v in post.items()) or "–"),
        ("bootstrap", f"{boot.get('n_boot', '?')} resamples by {boot.get('unit', 'patient')}, seed {boot.get('seed', '?')}"),
        ("evaluated", m.get("evaluated", "–")),
    ]
    rows = columns.comparison_rows([(summary.model, summary)])
    metric_cells = [list(columns.cells(r).values()) for r in rows]
    ops = [[f"{t.get('healthy_fpr', 0):.0%}", columns._fmt(t.get("threshold")) if t.get("threshold") is None else f"{t['threshold']:.4f}",
            columns._fmt(t.get("dice")), columns._fmt(t.get("precision")), columns._fmt(t.get("recall")),
            columns._fmt(t.get("calibration_fpr"))] for t in m.get("healthy_fpr_thresholds") or []]

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>uad report: {_e(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Evaluation report: {_e(title)}</h1>",
             f"<p class='note'>{_e(summary.where)}. Written by uad on {time.strftime('%Y-%m-%d %H:%M')}; self-contained "
             f"(no network needed).</p>",
             _table(["", ""], meta, "meta"),
             "<h2>Metrics</h2>", _table(columns.COLUMNS, metric_cells),
             f"<p class='note'>{_e(columns.TABLE_NOTES)} Baselines are computed on the same slices and pixels as the model. "
             f"{_e(m.get('best_dice_note', ''))}</p>",
             "<h2>Operating points at calibrated thresholds</h2>",
             _table(["healthy FPR", "threshold", "Dice", "precision", "recall", "achieved calibration FPR"], ops),
             "<h2>Curves</h2>", _figures_html(curves, summary.model),
             "<p class='note'>Slice level: one score per slice. Pixel level: every pixel inside the eroded brain mask. "
             "Each figure's toolbar downloads it as PNG.</p>",
             "<h2>Per case</h2>", _cases_html(cases, m),
             "<h2>Example slices</h2>",
             _examples_html(summary, cases, run) if examples else "<p class='note'>Left out (--no-examples).</p>",
             f"<script>{_SORT_JS}</script></body></html>"]
    return "\n".join(parts)


CASE_HEADERS = {"case_id": "case", "labelled": "labelled", "slices": "slices", "tumour_slices": "tumour slices",
                "tumour_ml": "tumour mL", "detected_ml": "detected mL", "dice": "Dice", "precision": "precision",
                "recall": "recall", "slice_auroc": "slice AUROC", "max_slice_score": "max slice score"}


def _cases_html(cases, m: dict[str, Any]) -> str:
    if cases is None:
        return "<p class='note'>This evaluation predates per-case tables: evaluate the run again to get one.</p>"
    cols = [c for c in CASE_HEADERS if c in cases.columns]
    shown, raw = [], []
    for _, r in cases.iterrows():
        row, vals = [], []
        for c in cols:
            v = r[c]
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            if c in ("tumour_ml", "detected_ml"):
                text = "–" if missing else f"{float(v):.2f}"
            elif c in ("dice", "precision", "recall", "slice_auroc", "max_slice_score"):
                text = columns._fmt(None if missing else v)
            elif c == "labelled":
                text = "yes" if str(v).lower() in ("true", "1") else "no"
            else:
                text = "–" if missing else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
            row.append(text)
            vals.append("" if missing else v)
        shown.append(row)
        raw.append(vals)
    return (_table([CASE_HEADERS[c] for c in cols], shown, "sortable", raw)
            + f"<p class='note'>{_e(m.get('cases_note', ''))}. Click a header to sort.</p>")


def write_report(summary: summaries.EvaluationSummary, out: str | Path, run: str | Path | None = None, examples: bool = True) -> Path:
    """Build the report and write it atomically to ``out``; returns the path."""
    out = Path(out)
    fileio.write_text(out, build_report(summary, run=run, examples=examples))
    return out
