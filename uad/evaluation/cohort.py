"""Scoring a cohort with several scorers on the same slices, pooling the counts, and summarising them into metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uad.data.store import SliceStore
from uad.evaluation import metrics
from uad.evaluation.columns import dice_key
from uad.scoring import overlap
from uad.scoring.maps import score_case
from uad.scoring.nifti import write_nifti
from uad.scoring.recipe import CASE_RATE, FPR_RATES, ScoringRecipe


@dataclass
class Tally:
    """Everything one scorer accumulates over the evaluated cases, kept per case so that a patient bootstrap
    (and a paired one between two scorers on the same cases) can resample it."""

    thresholds: list[dict]  # {"rate", "threshold", "calibration_fpr"} per rate of FPR_RATES
    healthy_quantiles: list[tuple[float, float]] = field(default_factory=list)  # of the calibration's healthy pixels
    brain: metrics.PixelAccumulator = field(default_factory=metrics.PixelAccumulator)  # every evaluated brain pixel
    pixels: metrics.PixelAccumulator = field(default_factory=metrics.PixelAccumulator)
    case_order: list[str] = field(default_factory=list)  # labelled cases, one entry each, in scoring order
    case_pos: list[np.ndarray] = field(default_factory=list)  # per case: tumour-pixel histogram
    case_neg: list[np.ndarray] = field(default_factory=list)  # per case: healthy-pixel histogram
    case_counts: list[np.ndarray] = field(default_factory=list)  # per case: (rates, 3) [tp, fp, fn] at each threshold
    # per case: [pixels of its tumour-free slices, how many of them each threshold flags]: the healthy FPR reached
    case_healthy: list[np.ndarray] = field(default_factory=list)
    case_ids: list[str] = field(default_factory=list)  # per slice
    labels: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)


CASES_NOTE = ("per case, at the threshold where 5 % of healthy calibration pixels are flagged; Dice, precision and "
              "recall inside the eroded brain mask; volumes at working resolution from the voxel spacing "
              "(tumour: every labelled voxel of the kept slices; detected: flagged voxels inside the brain mask)")


def _case_row(cid: str, case, vs, thr: float | None, thresholds: list[dict]) -> dict[str, Any]:
    """One row of cases.csv for the evaluated model (see CASES_NOTE); Dice at every calibrated threshold too."""
    ml = case.geometry.voxel_ml
    ok = thr is not None and np.isfinite(thr)
    pred = vs.prediction(thr) if ok else None
    row: dict[str, Any] = {"case_id": cid, "labelled": bool(case.labelled), "slices": int(len(vs.scores)),
                           "tumour_slices": "", "tumour_ml": "", "detected_ml": round(float(pred.sum()) * ml, 3) if ok else "",
                           "dice": "", "precision": "", "recall": "", "slice_auroc": "",
                           "max_slice_score": float(np.max(vs.scores)) if len(vs.scores) else "", "threshold": thr if ok else "",
                           **{dice_key(r): "" for r in FPR_RATES}}
    if case.labelled:
        tumour = np.asarray(case.tumour)
        labels = np.asarray(case.label).astype(np.int64)
        row["tumour_slices"] = int(labels.sum())
        row["tumour_ml"] = round(float(tumour.sum()) * ml, 3)
        truth = tumour & vs.mask
        if ok:
            c = overlap.Counts.of(pred, truth)
            row.update(dice=c.dice, precision=c.precision, recall=c.recall)
        for t in thresholds:
            if t["threshold"] is not None and np.isfinite(t["threshold"]):
                row[dice_key(t["rate"])] = overlap.Counts.of(vs.prediction(t["threshold"]), truth).dice
        if 0 < labels.sum() < len(labels):
            row["slice_auroc"] = metrics.slice_metrics(labels, np.asarray(vs.scores))["auroc"]
    return {k: ("" if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


DRIFT_QUANTILES = (0.75, 0.9, 0.99)  # of healthy calibration pixels, kept for the drift check on other folders


def calibrate(store: SliceStore, scorer, cases: list[str], recipe: ScoringRecipe, on_case=None) -> tuple[list[dict], list[tuple[float, float]]]:
    """Label-free thresholds: where ``FPR_RATES`` of the healthy slices' pixels of ``cases`` score at or above.

    Only slices without any tumour label are used, so tumour pixels never move a threshold. Returns one
    {"rate", "threshold", "calibration_fpr"} per rate (threshold None when there were no healthy pixels),
    and the healthy pixels' ``DRIFT_QUANTILES`` (what another folder's score distribution is held against).
    """
    healthy = metrics.PixelAccumulator()
    for cid in cases:
        if on_case is not None:
            on_case()
        case = store.case(cid)
        ok = ~case.label
        if ok.any():
            vs = score_case(scorer, case, recipe, ok)
            healthy.update_healthy(vs.maps, vs.mask)
        store.release(cid)
    thresholds = [{"rate": t["rate"], "threshold": t["threshold"], "calibration_fpr": t["achieved_fpr"]}
                  for t in metrics.healthy_fpr_thresholds(healthy, FPR_RATES)]
    return thresholds, [(q, healthy.quantile(q, "neg")) for q in DRIFT_QUANTILES] if healthy.n_neg else []


def score_cohort(store: SliceStore, scorers: list, eval_cases: list[str], calib_cases: list[str],
                 recipe: ScoringRecipe, maps_dir: Path | None = None, progress: bool = False,
                 case_rows: list[dict] | None = None, on_progress=None,
                 thresholds: dict[str, list[dict]] | None = None,
                 quantiles: dict[str, list[tuple[float, float]]] | None = None) -> tuple[dict[str, Tally], list[dict]]:
    """Score ``eval_cases`` with every scorer, all with ``recipe``; thresholds calibrated on the healthy slices of
    ``calib_cases``, except for scorers whose thresholds are given in ``thresholds`` (by scorer name: e.g. a
    run's own calibration applied to another folder).

    The first scorer's maps go to ``maps_dir`` and its slice score fills the rows' ``score`` column; the
    others (the baselines) get ``score_<name>`` columns. ``case_rows``, when given, receives one row per
    case for the first scorer (``_case_row``); ``on_progress(phase, done, total)`` is called as cases finish.
    """
    report_progress = on_progress or (lambda phase, done, total: None)
    from tqdm.auto import tqdm

    given = thresholds or {}
    given_quantiles = quantiles or {}
    tallies: dict[str, Tally] = {}
    todo = [s for s in scorers if s.name not in given]
    steps = iter(range(len(todo) * len(calib_cases) + 1))
    for scorer in scorers:
        if scorer.name in given:
            tallies[scorer.name] = Tally(thresholds=[dict(t) for t in given[scorer.name]],
                                         healthy_quantiles=list(given_quantiles.get(scorer.name, [])))
            continue
        found, found_q = calibrate(store, scorer, calib_cases, recipe,
                                   on_case=lambda: report_progress("calibrating", next(steps), len(todo) * len(calib_cases)))
        tallies[scorer.name] = Tally(thresholds=found, healthy_quantiles=found_q)

    rows: list[dict[str, Any]] = []
    first_thr = (at_rate(tallies[scorers[0].name].thresholds, CASE_RATE) or {}).get("threshold") if scorers else None
    for done, cid in enumerate(tqdm(eval_cases, desc="evaluating", unit="case", disable=not progress)):
        report_progress("scoring", done, len(eval_cases))
        case = store.case(cid)
        table = case.table
        per_case_scores = {}
        for scorer in scorers:
            vs = score_case(scorer, case, recipe)
            per_case_scores[scorer.name] = vs.scores
            tallies[scorer.name].brain.update_healthy(vs.maps, vs.mask)  # every brain pixel, labels or not: drift
            if scorer is scorers[0]:
                if maps_dir is not None:
                    write_nifti(vs.maps, case.geometry, maps_dir / f"{cid}_anomaly.nii.gz")
                if case_rows is not None:
                    case_rows.append(_case_row(cid, case, vs, first_thr, tallies[scorer.name].thresholds))
            if case.labelled:
                _tally_case(tallies[scorer.name], cid, case.label, vs, np.asarray(case.tumour))
        for i, r in enumerate(table.itertuples()):
            rows.append({
                "case_id": cid, "slice_index": int(r.slice_index),
                "label": int(r.label) if case.labelled else "", "tumour_pixels": int(r.tumour_pixels) if case.labelled else "",
                "brain_pixels": int(r.brain_pixels), "score": float(per_case_scores[scorers[0].name][i]),
                **{f"score_{s.name}": float(per_case_scores[s.name][i]) for s in scorers[1:]},
            })
        store.release(cid)
    report_progress("scoring", len(eval_cases), len(eval_cases))
    return tallies, rows


def at_rate(thresholds: list[dict], rate: float) -> dict | None:
    return next((t for t in thresholds if abs(t["rate"] - rate) < 1e-9), None)


def merge_tallies(parts: list[Tally]) -> Tally:
    """One tally from several folds' (disjoint patients): pooled pixels, slices and threshold counts.

    Each fold keeps the thresholds its own calibration set chose; the pooled entry lists them all.
    """
    merged = Tally(thresholds=[{"rate": th["rate"], "threshold": None, "calibration_fpr": None,
                                "per_fold_thresholds": [p.thresholds[i]["threshold"] for p in parts]}
                               for i, th in enumerate(parts[0].thresholds)])
    for p in parts:
        merged.pixels.merge(p.pixels)
        merged.brain.merge(p.brain)
        for name in ("case_order", "case_pos", "case_neg", "case_counts", "case_healthy", "case_ids", "labels", "scores"):
            getattr(merged, name).extend(getattr(p, name))
    return merged


def _tally_case(t: Tally, cid: str, labels: np.ndarray, vs, tumour: np.ndarray) -> None:
    case_pixels = metrics.PixelAccumulator()
    case_pixels.update(vs.maps, tumour, vs.mask)
    t.pixels.merge(case_pixels)
    healthy_slices = ~np.asarray(labels, bool)
    healthy_px = vs.maps[healthy_slices][vs.mask[healthy_slices]]
    # Per-case histograms (same bins as the headline metric) feed the patient bootstrap.
    t.case_order.append(cid)
    t.case_pos.append(case_pixels.pos)
    t.case_neg.append(case_pixels.neg)
    counts = []
    truth = tumour & vs.mask
    for th in t.thresholds:
        thr = th["threshold"]
        if thr is None or not np.isfinite(thr):
            counts.append(np.zeros(3, np.int64))
            continue
        c = overlap.Counts.of(vs.prediction(thr), truth)
        counts.append(np.array([c.tp, c.fp, c.fn], np.int64))
    t.case_counts.append(np.stack(counts))
    t.case_healthy.append(np.array([healthy_px.size] + [
        int(np.count_nonzero(healthy_px >= th["threshold"])) if th["threshold"] is not None and np.isfinite(th["threshold"]) else 0
        for th in t.thresholds], np.int64))
    t.case_ids += [cid] * len(labels)
    t.labels.append(labels.astype(np.int64))
    t.scores.append(vs.scores)


def _reached_fpr(t: Tally) -> list[float | None]:
    """Per threshold: the fraction of the evaluated tumour-free slices' pixels it flags (what the nominal rate
    became on these patients; over folds, each fold's pixels against that fold's own thresholds)."""
    if not t.case_healthy:
        return [None] * len(t.thresholds)
    total = np.sum(t.case_healthy, axis=0)
    return [float(f) / total[0] if total[0] else None for f in total[1:]]


def summarise(t: Tally, n_boot: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    labels = np.concatenate(t.labels) if t.labels else np.zeros(0, np.int64)
    scores = np.concatenate(t.scores) if t.scores else np.zeros(0, np.float32)
    sm = metrics.slice_metrics(labels, scores)
    pix = t.pixels.summary()
    sort_idx = np.argsort(t.case_order)  # bootstrap_pixel expects sorted case-id order
    operating = []
    totals = np.sum(t.case_counts, axis=0) if t.case_counts else np.zeros((len(t.thresholds), 3), np.int64)
    for th, (tp, fp, fn), reached in zip(t.thresholds, totals, _reached_fpr(t)):
        c = overlap.Counts(int(tp), int(fp), int(fn))
        if th["threshold"] is None and not th.get("per_fold_thresholds"):
            reached = None
        operating.append({
            "rate": th["rate"], "threshold": th["threshold"], "calibration_fpr": th.get("calibration_fpr"),
            "reached_fpr": reached, "dice": c.dice, "precision": c.precision, "recall": c.recall, "f1": c.dice,
            "tp": c.tp, "fp": c.fp, "fn": c.fn,
            **({"per_fold_thresholds": th["per_fold_thresholds"]} if "per_fold_thresholds" in th else {}),
        })
    result = {
        "slice_auroc": sm["auroc"], "slice_ap": sm["ap"],
        "slice_auroc_ci": _ci(metrics.bootstrap_slice_metric(t.case_ids, labels, scores, "auroc", n_boot=n_boot, seed=seed)) if len(labels) and n_boot else None,
        "slice_youden": metrics.threshold_youden(labels, scores),
        "slice_best_f1": metrics.threshold_best_f1(labels, scores),
        "pixel_auroc": pix["auroc"], "pixel_ap": pix["ap"],
        "pixel_ap_ci": _ci(metrics.bootstrap_pixel(np.stack(t.case_pos)[sort_idx], np.stack(t.case_neg)[sort_idx], "ap", n_boot=n_boot, seed=seed)) if t.case_pos and n_boot else None,
        "best_dice": pix["best_dice"],
        "healthy_fpr_thresholds": operating,
        "n_slices": int(len(labels)), "n_tumour_slices": int(labels.sum()),
        "n_pixels": int(t.pixels.n_pos + t.pixels.n_neg), "n_tumour_pixels": int(t.pixels.n_pos),
    }
    curves = {"slice_roc": sm.get("roc"), "slice_pr": sm.get("pr"), "pixel_roc": pix.get("roc"), "pixel_pr": pix.get("pr")}
    return result, curves


def _ci(boot: dict[str, Any]) -> dict[str, Any]:
    return {"low": boot["low"], "high": boot["high"], "n_used": boot["n_used"]}



