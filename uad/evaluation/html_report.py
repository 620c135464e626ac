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
import time
from pathlib import Path
from typing import Any

import numpy as np

from uad.core import fileio
from uad.data import identity
from uad.data.preprocess import screen_columns
from uad.evaluation import columns, figures, summaries
from uad.scoring import view
from uad.scoring.recipe import CASE_RATE, rate_label

MODEL_COLOUR = figures.MODEL_COLOURS[-1]
TP, FP, FN = (figures.PRED_COLOURS[k] for k in ("TP", "FP", "FN"))
GT = figures.GT_CONTOUR
EXAMPLE_PX = 256

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} th,td{padding:.3em .6em;border-bottom:1px solid #e4e4e4;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f4f4f4} .meta td{text-align:left} .meta td:first-child{color:#555}
.note{color:#555;font-size:.85em;max-width:60em} .grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.examples figure{display:inline-block;margin:0 .6em .6em 0;text-align:center;font-size:.8em;color:#444}
.examples img{width:220px;height:220px;image-rendering:pixelated;border:1px solid #ccc;display:block}
.slice{position:relative;display:inline-block} .ol{position:absolute;color:#ff8;font:bold 13px sans-serif;text-shadow:0 0 3px #000}
.ol.t{top:2px;left:50%;transform:translateX(-50%)} .ol.b{bottom:2px;left:50%;transform:translateX(-50%)}
.ol.l{left:4px;top:50%;transform:translateY(-50%)} .ol.r{right:4px;top:50%;transform:translateY(-50%)}
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
def _figures_html(curves: dict[str, Any], model: str, label: str, file_stem: str) -> str:
    parts, first = [], True
    series = [figures.CurveSeries(label, curves.get(model) or {}, MODEL_COLOUR)]
    for level in ("slice", "pixel"):
        for kind in ("roc", "pr"):
            name = figures.curve_title(kind, level)
            fig = figures.curve_figure(kind, level, series, [("", curves)], theme="light", title=f"{name} · {label}")
            if len(fig.data) <= (1 if kind == "roc" else 0):
                continue
            config = {"displaylogo": False, "toImageButtonOptions": {
                "format": "png", "scale": 2, "filename": f"{file_stem}-{level}-{kind}"}}
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


def _radiological(a: np.ndarray) -> np.ndarray:
    """A display-order slice (patient left → right across) as drawn in the radiological convention, as the app does."""
    return a[:, screen_columns(a.shape[1], "radiological")]


def _lettered(src: str, caption: str) -> str:
    """A figure with the orientation letters of a radiological axial view (patient's right on the screen's left)."""
    letters = "".join(f"<span class='ol {pos}'>{t}</span>" for pos, t in (("t", "A"), ("b", "P"), ("l", "R"), ("r", "L")))
    return f"<figure><div class='slice'><img alt='{_e(caption)}' src='{src}'>{letters}</div><figcaption>{_e(caption)}</figcaption></figure>"


def _example_panels(image, heat, vmax, pred, truth) -> list[tuple[str, str]]:
    """Input, anomaly map with the tumour outline, prediction vs truth: radiological convention (the app's)."""
    image, heat, pred, truth = (_radiological(np.asarray(a)) for a in (image, heat, pred, truth))
    lut = figures.inferno()
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
    """Best and worst labelled cases by Dice at the per-case threshold, scored again now with the evaluation's
    own recipe and threshold, and only with the weights it scored (a changed checkpoint is refused)."""
    if cases is None or "dice" not in cases.columns:
        return "<p class='note'>Example slices need the per-case table (cases.csv), which this evaluation predates.</p>"
    ranked = cases[cases["dice"].notna()].sort_values("dice", ascending=False)
    if ranked.empty:
        return "<p class='note'>No labelled case with a defined Dice: no example slices.</p>"
    picks = [("best", r) for _, r in ranked.head(n_each).iterrows()]
    picks += [("worst", r) for _, r in ranked.tail(n_each).iloc[::-1].iterrows() if r.case_id not in {p[1].case_id for p in picks}]
    recorded = summary.raw.get("checkpoint")
    ckpt_path = Path(run) if run is not None else identity.repo_path(recorded.get("path", "") if isinstance(recorded, dict) else recorded or "")
    root = summary.local_root
    if root is None or not root.is_dir():
        return f"<p class='note'>Example slices left out: the dataset folder {_e(root)} is not on this machine.</p>"
    try:
        from uad.checkpoints import weights as ckpt_weights
        from uad.data.cases import discover_cases
        from uad.data.store import load_working_case
        from uad.scoring.cache import cached_score_case
        from uad.scoring.scorers import ModelScorer

        ckpt = ckpt_weights.load(ckpt_path)
        recipe = summary.recipe
    except Exception as exc:  # noqa: BLE001 - a report without pictures is still a report
        return f"<p class='note'>Example slices left out: cannot load the checkpoint {_e(ckpt_path)} ({_e(exc)}).</p>"
    stale = summary.staleness(ckpt.record.weights_sha256)
    if stale:
        return f"<p class='note'>Example slices left out: {_e(stale)} (they would show other weights than the numbers above).</p>"
    scorer = ModelScorer.of(ckpt)
    thr = summary.calibration.threshold(CASE_RATE)
    try:
        found = {c.case_id: c for c in discover_cases(root)[0]}
    except Exception:  # noqa: BLE001 - each case then reports its own problem below
        found = {}
    blocks = []
    for which, r in picks:
        try:
            case = load_working_case(root, found.get(str(r.case_id)) or str(r.case_id), ckpt.preprocess)
            # The maps Explore showed for this run, case and recipe, when it has shown them (uad.scoring.cache).
            vs = cached_score_case(scorer, case, recipe, case=found.get(str(r.case_id)), config=ckpt.preprocess,
                                   weights_sha256=ckpt.info.get("weights_sha256"))
        except Exception as exc:  # noqa: BLE001
            blocks.append(f"<p class='note'>{_e(r.case_id)}: cannot be scored now ({_e(exc)}).</p>")
            continue
        tumour = np.asarray(case.tumour)
        k = int(np.argmax(tumour.sum(axis=(1, 2))))
        pred = vs.prediction(thr)[k] if thr is not None else np.zeros_like(tumour[k])
        panels = _example_panels(np.asarray(case.images[k, 0], np.float32), vs.maps[k], view.colour_max([vs]), pred,
                                 tumour[k] & vs.mask[k])
        figs = "".join(_lettered(src, cap) for cap, src in panels)
        blocks.append(f"<h3>{_e(which)} case: {_e(r.case_id)} · Dice {columns.fmt(r.dice)} · slice {int(case.slice_index[k])}</h3>"
                      f"<div class='examples'>{figs}</div>")
    legend = "".join(f"<span class='swatch' style='background:rgb{c}'></span>{_e(t)}" for c, t in figures.PRED_LEGEND)
    thr_text = f"{thr:.4f}" if isinstance(thr, (int, float)) else "–"
    return (f"<p class='note'>The axial slice with the most tumour of the best and worst case by Dice, at the calibrated "
            f"threshold {thr_text} ({rate_label(CASE_RATE)} healthy FPR), scored with this evaluation's recipe. "
            f"Radiological convention (the patient's right on the left), as in the app. "
            f"Channel shown: {_e(ckpt.preprocess.modalities[0])}. {legend}</p>" + "".join(blocks))


# -- the document ---------------------------------------------------------------------------------------------
def run_label(run: str | Path | None, summary: summaries.EvaluationSummary) -> str:
    """How the report names the run: ``real/autoencoder`` for a shipped checkpoint, else the run's folder name."""
    if run is None:
        return str(summary.raw.get("run") or summary.model)
    return summaries.shipped_name(Path(run)) or Path(run).name


def build_report(summary: summaries.EvaluationSummary, run: str | Path | None = None, examples: bool = True,
                 label: str | None = None) -> str:
    """The report's HTML (one string, no outside references). ``label``: the run's name as the caller lists it."""
    m = summary.raw
    label = label or run_label(run, summary)
    title = f"{label} · {summary.model}" if label != summary.model else label
    curves = {}
    if summary.folder is not None and (summary.folder / "curves.json").is_file():
        try:
            curves = fileio.read_json(summary.folder / "curves.json")
        except (OSError, ValueError):
            curves = {}
    cases = summary.cases()
    pre, boot = summary.preprocess, m.get("bootstrap") or {}
    recipe, calibration = summary.recipe, summary.calibration
    ck = m.get("checkpoint")
    checkpoint = (f"{ck.get('path', '?')} · epoch {ck.get('epoch', '?')} · weights SHA-256 {str(ck.get('weights_sha256') or '?')[:12]}…"
                  if isinstance(ck, dict) else str(ck or run or "–"))
    meta = [
        ("run", label),
        ("checkpoint", checkpoint),
        ("model", summary.model),
        ("dataset", f"{summary.dataset.label} · id {summary.dataset.id}"),
        ("dataset folder", summary.dataset.root or m.get("data_root") or "–"),
        ("split", f"{summaries.SPLIT_WORDS.get(summary.split, summary.split)} ({m.get('split_source', '?')})"),
        ("cases", f"{m.get('n_labelled_cases', '?')} labelled, {m.get('n_unlabelled_cases', 0)} unlabelled; "
                  f"{m.get('n_slices', '?')} labelled slices ({m.get('n_tumour_slices', '?')} with tumour)"),
        ("scoring recipe", f"{recipe.describe()} (key {recipe.key})"),
        ("thresholds", f"{m.get('calibration_words') or 'calibrated'}: healthy slices of {len(calibration.cases)} cases"
                       + (f" ({', '.join(calibration.cases)})" if calibration.cases else "")
                       + (f" in {dict(calibration.dataset).get('label')}" if calibration.dataset else "")),
        ("preprocessing", f"{summary.image_size} px, {'+'.join(summary.modalities)}, " + ", ".join(
            f"{k} {v}" for k, v in pre.items() if k not in ("image_size", "modalities"))),
        ("bootstrap", f"{boot.get('n_boot', '?')} resamples by {boot.get('unit', 'patient')}, seed {boot.get('seed', '?')}"),
        ("evaluated", m.get("evaluated", "–")),
    ]
    if summary.drift_warning:  # the label-free check the CLI and the app show too
        meta.insert(meta.index(next(r for r in meta if r[0] == "thresholds")) + 1, ("drift check", "⚠ " + summary.drift_warning))
    rows = columns.comparison_rows([(label, summary)])
    metric_cells = [list(columns.cells(r).values()) for r in rows]
    ops = columns.operating_rows(m)
    file_stem = f"uad-{label.replace('/', '-')}-{summary.dataset.id}-{summary.split}"

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>uad report: {_e(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Evaluation report: {_e(title)}</h1>",
             f"<p class='note'>{_e(summary.where)}. Written by uad on {time.strftime('%Y-%m-%d %H:%M')}; self-contained "
             f"(no network needed).</p>",
             _table(["", ""], meta, "meta"),
             "<h2>Metrics</h2>", _table(columns.header(), metric_cells),
             f"<p class='note'>{_e(columns.TABLE_NOTES)} Baselines are computed on the same slices and pixels as the model. "
             f"{_e(m.get('best_dice_note', ''))}</p>",
             "<h2>Paired differences</h2>", _paired_html(summary, label),
             "<h2>Operating points at the calibrated thresholds</h2>",
             _table(list(ops[0]) if ops else ["healthy FPR"], [list(r.values()) for r in ops]),
             "<h2>Curves</h2>", _figures_html(curves, summary.model, label, file_stem),
             "<p class='note'>Slice level: one score per slice. Pixel level: every pixel inside the eroded brain mask. "
             "Each figure's toolbar downloads it as PNG.</p>",
             "<h2>Per case</h2>", _cases_html(cases, m),
             "<h2>Example slices</h2>",
             _examples_html(summary, cases, run) if examples else "<p class='note'>Left out (--no-examples).</p>",
             f"<script>{_SORT_JS}</script></body></html>"]
    return "\n".join(parts)


def _paired_html(summary: summaries.EvaluationSummary, label: str) -> str:
    """The model against each baseline on the same patients: A − B with a paired patient-bootstrap interval."""
    from uad.evaluation import paired

    try:
        model = paired.case_arrays(summary)
    except ValueError as exc:
        return f"<p class='note'>{_e(exc)}</p>"
    blocks = []
    for b in summary.baselines:
        try:
            diffs = paired.paired_differences(model, paired.case_arrays(summary, b),
                                              int((summary.raw.get("bootstrap") or {}).get("n_boot") or 1000) or 1000)
        except (ValueError, paired.ConfigError) as exc:
            blocks.append(f"<p class='note'>{_e(b)}: {_e(exc)}</p>")
            continue
        name_b = summaries.BASELINE_LABELS.get(b, b)
        rows = [[d.label, f"{d.a:.3f}", f"{d.b:.3f}", f"{d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}]",
                 {"A better": f"{label} better", "B better": f"{name_b} better"}.get(d.verdict, d.verdict)] for d in diffs]
        blocks.append(f"<h3>{_e(label)} (A) − {_e(name_b)} (B)</h3>"
                      + _table(["metric", "A", "B", "A − B [95% paired CI]", "verdict"], rows))
    return "".join(blocks) + ("<p class='note'>Each bootstrap resample draws patients with replacement once and computes "
                              "both methods on it; a difference is called only when its 95 % interval excludes zero.</p>")


def _cases_html(cases, m: dict[str, Any]) -> str:
    if cases is None:
        return "<p class='note'>This evaluation predates per-case tables: evaluate the run again to get one.</p>"
    spec = [c for c in columns.CASES if c.key in cases.columns]
    head = ["case", "labelled"] + [c.label for c in spec]
    shown, raw = [], []
    for _, r in cases.iterrows():
        labelled = "yes" if str(r.get("labelled")).lower() in ("true", "1") else "no"
        values = [columns.number(r[c.key]) for c in spec]
        shown.append([str(r["case_id"]), labelled] + [c.cell({c.key: v}) for c, v in zip(spec, values)])
        raw.append(["", ""] + ["" if v is None else v for v in values])
    return (_table(head, shown, "sortable", raw)
            + f"<p class='note'>{_e(m.get('cases_note', ''))}. Click a header to sort.</p>")


def write_report(summary: summaries.EvaluationSummary, out: str | Path, run: str | Path | None = None, examples: bool = True) -> Path:
    """Build the report and write it atomically to ``out``; returns the path."""
    out = Path(out)
    fileio.write_text(out, build_report(summary, run=run, examples=examples))
    return out
