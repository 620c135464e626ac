"""Scoring a cohort with several scorers on the same slices, pooling the counts, and summarising them into metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uad.data.store import SliceStore
from uad.evaluation import metrics, summaries
from uad.scoring.maps import score_case
from uad.scoring.nifti import write_nifti
from uad.scoring.postprocess import threshold_maps
from uad.scoring.recipe import PostprocessConfig


@dataclass
class _Tally:
    """Everything one scorer accumulates over the evaluated cases."""

    thresholds: list[dict]
    pixels: metrics.PixelAccumulator = field(default_factory=metrics.PixelAccumulator)
    case_pos: list[np.ndarray] = field(default_factory=list)
    case_neg: list[np.ndarray] = field(default_factory=list)
    at_fpr: list[np.ndarray] = field(default_factory=list)  # per threshold: [tp, fp, fn]
    case_ids: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)


CASES_NOTE = ("per case, at the threshold where 5% of healthy calibration pixels are flagged; Dice, precision and "
              "recall inside the eroded brain mask; volumes at working resolution from the voxel spacing "
              "(tumour: every labelled voxel of the kept slices; detected: flagged voxels inside the brain mask)")


def working_voxel_ml(geometry) -> float:
    """Volume of one working-size voxel in mL: the source voxel spacing (mm), in-plane enlarged by the
    square crop's resize (``side`` source pixels become ``image_size`` pixels)."""
    zooms = np.sqrt((np.asarray(geometry.affine, float)[:3, :3] ** 2).sum(axis=0))  # per source axis
    canonical = np.empty(3)
    for src_axis, (target, _flip) in enumerate(np.asarray(geometry.ornt)):
        canonical[int(target)] = zooms[src_axis]  # the RAS+ axis this source axis became
    in_plane = canonical[0] * canonical[1] * (geometry.side / geometry.image_size) ** 2
    return float(in_plane * canonical[2] / 1000.0)


def _case_row(cid: str, case, vs, thr: float | None, post: PostprocessConfig) -> dict[str, Any]:
    """One row of cases.csv for the evaluated model (see CASES_NOTE)."""
    ml = working_voxel_ml(case.geometry)
    ok = thr is not None and np.isfinite(thr)
    pred = (threshold_maps(vs.maps, thr, post.min_component) & vs.mask) if ok else None
    row: dict[str, Any] = {"case_id": cid, "labelled": bool(case.labelled), "slices": int(len(vs.scores)),
                           "tumour_slices": "", "tumour_ml": "", "detected_ml": round(float(pred.sum()) * ml, 3) if ok else "",
                           "dice": "", "precision": "", "recall": "", "slice_auroc": "",
                           "max_slice_score": float(np.max(vs.scores)) if len(vs.scores) else "", "threshold": thr if ok else ""}
    if case.labelled:
        tumour = np.asarray(case.tumour)
        labels = np.asarray(case.label).astype(np.int64)
        row["tumour_slices"] = int(labels.sum())
        row["tumour_ml"] = round(float(tumour.sum()) * ml, 3)
        if ok:
            gt = tumour & vs.mask
            tp, fp, fn = int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum())
            row.update(dice=_safe_div(2 * tp, 2 * tp + fp + fn), precision=_safe_div(tp, tp + fp), recall=_safe_div(tp, tp + fn))
        if 0 < labels.sum() < len(labels):
            row["slice_auroc"] = metrics.slice_metrics(labels, np.asarray(vs.scores))["auroc"]
    return {k: ("" if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


def score_cohort(store: SliceStore, scorers: list, eval_cases: list[str], calib_cases: list[str],
                 post: PostprocessConfig, maps_dir: Path | None = None, progress: bool = False,
                 case_rows: list[dict] | None = None, on_progress=None) -> tuple[dict[str, "_Tally"], list[dict]]:
    """Score ``eval_cases`` with every scorer; thresholds calibrated on the healthy slices of ``calib_cases``.

    The first scorer's maps go to ``maps_dir`` and its slice score fills the rows' ``score`` column; the
    others (the baselines) get ``score_<name>`` columns. ``case_rows``, when given, receives one row per
    case for the first scorer (``_case_row``); ``on_progress(phase, done, total)`` is called as cases finish.
    """
    report_progress = on_progress or (lambda phase, done, total: None)
    from tqdm.auto import tqdm

    # 1. Label-free thresholds from healthy validation pixels only.
    tallies: dict[str, _Tally] = {}
    steps, step = len(scorers) * len(calib_cases), 0
    for scorer in scorers:
        healthy = metrics.PixelAccumulator()
        for cid in calib_cases:
            report_progress("calibrating", step, steps)
            step += 1
            case = store.case(cid)
            ok = ~case.label
            if ok.any():
                vs = score_case(scorer, case, post, ok)
                healthy.update_healthy(vs.maps, vs.mask)
            store.release(cid)
        tallies[scorer.name] = _Tally(thresholds=metrics.healthy_fpr_thresholds(healthy))

    # 2. Score every evaluated slice with every scorer.
    rows: list[dict[str, Any]] = []
    first_thr = (at_rate(tallies[scorers[0].name].thresholds, summaries.CASE_RATE) or {}).get("threshold") if scorers else None
    for done, cid in enumerate(tqdm(eval_cases, desc="evaluating", unit="case", disable=not progress)):
        report_progress("scoring", done, len(eval_cases))
        case = store.case(cid)
        table = case.table
        per_case_scores = {}
        for scorer in scorers:
            vs = score_case(scorer, case, post)
            per_case_scores[scorer.name] = vs.scores
            if scorer is scorers[0]:
                if maps_dir is not None:
                    write_nifti(vs.maps, case.geometry, maps_dir / f"{cid}_anomaly.nii.gz")
                if case_rows is not None:
                    case_rows.append(_case_row(cid, case, vs, first_thr, post))
            if case.labelled:
                _tally_case(tallies[scorer.name], cid, case.label, vs, np.asarray(case.tumour), post)
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


def merge_tallies(parts: list["_Tally"]) -> "_Tally":
    """One tally from several folds' (disjoint patients): pooled pixels, slices and threshold counts.

    Each fold keeps the thresholds its own calibration set chose; the pooled entry lists them all.
    """
    merged = _Tally(thresholds=[{"rate": th["rate"], "threshold": None,
                                 "per_fold_thresholds": [p.thresholds[i]["threshold"] for p in parts]}
                                for i, th in enumerate(parts[0].thresholds)])
    for p in parts:
        merged.pixels.merge(p.pixels)
        merged.case_pos += p.case_pos
        merged.case_neg += p.case_neg
        merged.at_fpr += p.at_fpr
        merged.case_ids += p.case_ids
        merged.labels += p.labels
        merged.scores += p.scores
    return merged


def _tally_case(t: _Tally, cid: str, labels: np.ndarray, vs, tumour: np.ndarray, post: PostprocessConfig) -> None:
    case_pixels = metrics.PixelAccumulator()
    case_pixels.update(vs.maps, tumour, vs.mask)
    t.pixels.merge(case_pixels)
    # Per-case histograms (same bins as the headline metric) feed the patient bootstrap.
    t.case_pos.append(case_pixels.pos)
    t.case_neg.append(case_pixels.neg)
    counts = []
    for th in t.thresholds:
        thr = th["threshold"]
        if thr is None or not np.isfinite(thr):
            counts.append(np.zeros(3, np.int64))
            continue
        pred = threshold_maps(vs.maps, thr, post.min_component) & vs.mask
        gt = tumour & vs.mask
        counts.append(np.array([(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()], np.int64))
    t.at_fpr.append(np.stack(counts))
    t.case_ids += [cid] * len(labels)
    t.labels.append(labels.astype(np.int64))
    t.scores.append(vs.scores)


def summarise(t: _Tally, n_boot: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    labels = np.concatenate(t.labels) if t.labels else np.zeros(0, np.int64)
    scores = np.concatenate(t.scores) if t.scores else np.zeros(0, np.float32)
    sm = metrics.slice_metrics(labels, scores)
    pix = t.pixels.summary()
    sort_idx = np.argsort(list(dict.fromkeys(t.case_ids)))  # bootstrap_pixel expects sorted case-id order
    at_fpr = []
    totals = np.sum(t.at_fpr, axis=0) if t.at_fpr else np.zeros((len(t.thresholds), 3), np.int64)
    for th, (tp, fp, fn) in zip(t.thresholds, totals):
        at_fpr.append({
            "healthy_fpr": th["rate"], "threshold": th["threshold"], "calibration_fpr": th.get("healthy_fpr"),
            "dice": _safe_div(2 * tp, 2 * tp + fp + fn), "precision": _safe_div(tp, tp + fp),
            "recall": _safe_div(tp, tp + fn), "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
            "tp": int(tp), "fp": int(fp), "fn": int(fn),
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
        "healthy_fpr_thresholds": at_fpr,
        "n_slices": int(len(labels)), "n_tumour_slices": int(labels.sum()),
        "n_pixels": int(t.pixels.n_pos + t.pixels.n_neg), "n_tumour_pixels": int(t.pixels.n_pos),
    }
    curves = {"slice_roc": sm.get("roc"), "slice_pr": sm.get("pr"), "pixel_roc": pix.get("roc"), "pixel_pr": pix.get("pr")}
    return result, curves


def _ci(boot: dict[str, Any]) -> dict[str, Any]:
    return {"low": boot["low"], "high": boot["high"], "n_used": boot["n_used"]}


def _safe_div(a, b) -> float:
    return float(a) / float(b) if b else float("nan")

