"""Evaluation: slice and pixel metrics for a model and both baselines on the same slices and pixels.

Thresholds that a user could actually deploy are calibrated on *healthy validation slices only* (1 %,
5 %, 10 % pixel false-positive rate); ``best_dice`` looks at the test labels and is reported as the
oracle it is. Pixel metrics stream through fixed-bin histograms (exact up to 10,000 score bins on
[0, 1]), so a full BraTS test split stays within memory.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uad import checkpoints, fileio, metrics, report
from uad.data.demo import resolve_data_root
from uad.data.splits import split_cases
from uad.data.store import SliceStore, build_store
from uad.errors import ConfigError
from uad.score import BASELINES, ModelScorer, PostprocessConfig, baseline, score_case, threshold_maps, write_nifti

SPLIT_CHOICES = ("test", "val", "train", "all")


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


def data_root_for(info: dict[str, Any], data: str | Path | None) -> Path:
    """The dataset to evaluate on: the one given, else the one the checkpoint was trained on."""
    if data is not None:
        return Path(data)
    trained = report.trained_data_root(info)
    if trained is None or info.get("data", {}).get("demo", False):
        return resolve_data_root(None)
    if not trained.is_dir():
        raise ConfigError(f"the checkpoint's training data {trained} is not here; pass --data DIR")
    return trained


@dataclass
class SplitPlan:
    """Which cases an evaluation scores and which calibrate its thresholds, and why."""

    eval_cases: list[str]
    calibration_cases: list[str]
    source: str  # "recorded" (the checkpoint's own case lists), "recipe" (old checkpoints) or "external"
    missing: list[str] = field(default_factory=list)  # recorded cases of the split that are not here now
    training_overlap: list[str] = field(default_factory=list)  # evaluated cases the model was trained on


def split_for(store: SliceStore, info: dict[str, Any], split: str, root: Path | None = None) -> SplitPlan:
    """The evaluation's cases, from the patient lists the checkpoint recorded at training time.

    Recomputing a split from whatever cases exist now would move training patients into the test set as
    soon as one case is added, removed or unreadable, so the recorded lists decide: a ``test``/``val``
    evaluation scores the recorded cases that are present (the absent ones are reported by name) and never
    a training case. ``all`` scores every case; on a folder other than the training one it is labelled
    "external". Checkpoints older than the recorded lists fall back to their ratio + seed recipe.
    """
    if split not in SPLIT_CHOICES:
        raise ConfigError(f"split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    present = set(store.case_ids)
    labelled = store.labelled_ids
    unlabelled = [c for c in store.case_ids if c not in set(labelled)]
    recipe = info.get("split", {})
    recorded = recipe.get("cases")
    trained_root = report.trained_data_root(info)
    same_data = root is None or (trained_root is not None and trained_root.resolve() == Path(root).resolve())
    if recorded:
        parts = {k: list(recorded.get(k, [])) for k in ("train", "val", "test")}
        source = "recorded"
    else:
        parts = split_cases(labelled, recipe.get("ratios") or (0.7, 0.1, 0.2), recipe.get("seed", 0))
        source = "recipe"
    trained_on = set(parts["train"])
    calibration = [c for c in (parts["val"] or parts["train"]) if c in present and c in set(labelled)]
    if split == "all":
        cases = labelled + unlabelled
        if not same_data:
            # Another cohort: its own healthy slices of the recipe's validation share calibrate thresholds.
            own = split_cases(labelled, recipe.get("ratios") or (0.7, 0.1, 0.2), recipe.get("seed", 0)) if labelled else {"val": [], "train": []}
            calibration = own["val"] or own["train"]
            source = "external"
        return SplitPlan(cases, calibration, source, [], sorted(trained_on & set(cases)))
    wanted = parts[split]
    missing = sorted(set(wanted) - present)
    cases = [c for c in store.case_ids if c in set(wanted)]
    overlap = sorted(trained_on & set(cases))
    if overlap:
        raise ConfigError(f"the {split} split would score cases the model was trained on ({', '.join(overlap)}); "
                          f"use --split all to score them knowingly")
    # Unlabelled cases are scored with the test split (they are never trained on and have no label to
    # leak), never counted in the metrics.
    if split == "test":
        cases += [c for c in unlabelled if c not in set(cases)]
    return SplitPlan(cases, calibration, source, missing, [])


def evaluate(
    run: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    save_maps: bool = False,
    post: PostprocessConfig = PostprocessConfig(),
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run or checkpoint folder on a dataset and split; returns the metrics.

    Writes, in ``out`` (default ``<run>/eval/<dataset-id>/<split>/``, see ``uad.report.write_base``): curves.json,
    slices.csv (one row per slice), cases.csv (one row per case), progress.json while it works, and
    metrics.json last (its presence marks a complete evaluation).
    """
    ckpt = checkpoints.load(run, device=device)
    root = data_root_for(ckpt.info, data)
    dataset = report.dataset_ref(root)
    out_dir = Path(out) if out else report.eval_folder(report.write_base(run), dataset, split)
    progress_file = ProgressFile(out_dir / PROGRESS)
    progress_file.update("preparing", 0, 0)  # the slice cache of a new dataset takes a while to build
    store = build_store(root, ckpt.preprocess, progress=progress)
    plan = split_for(store, ckpt.info, split, root if data is not None else None)
    if not plan.eval_cases:
        missing = f" (recorded but missing here: {', '.join(plan.missing)})" if plan.missing else ""
        raise ConfigError(f"no case of the {split} split is in {root}{missing}")
    scorers = [ModelScorer(ckpt.model, device=device)] + [baseline(b) for b in BASELINES]
    case_rows: list[dict[str, Any]] = []
    tallies, rows = score_cohort(store, scorers, plan.eval_cases, plan.calibration_cases, post,
                                 maps_dir=out_dir / "maps" if save_maps else None, progress=progress,
                                 case_rows=case_rows, on_progress=progress_file.update)

    # Metrics, with patient-level bootstrap intervals.
    progress_file.update("summarising", 0, 1)
    results: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, tally in tallies.items():
        results[name], curves[name] = summarise(tally, n_boot, seed)
    model_name = scorers[0].name
    summary = {
        "model": model_name,
        "checkpoint": str(ckpt.path),
        "run": Path(run).name,
        "data_root": str(root),
        "dataset": dataset.to_dict(),
        "split": split,
        "split_source": plan.source,
        "eval_cases": plan.eval_cases,
        "calibration_cases": plan.calibration_cases,
        "missing_cases": plan.missing,
        "training_cases_evaluated": plan.training_overlap,
        "n_slices": len(rows),
        "n_labelled_cases": len(set(plan.eval_cases) & set(store.labelled_ids)),
        "n_unlabelled_cases": len(set(plan.eval_cases) - set(store.labelled_ids)),
        "preprocess": ckpt.preprocess.to_dict(),
        "postprocess": post.to_dict(),
        "pixel_metrics_note": "exact up to 10,000 score bins on [0, 1]; pixels inside the eroded brain mask",
        "best_dice_note": metrics.ORACLE_NOTE,
        "cases_note": CASES_NOTE,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "unit": "patient"},
        **results[model_name],
        "baselines": {b: results[b] for b in BASELINES},
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    fileio.write_json(out_dir / "curves.json", curves)
    _write_csv(out_dir / "slices.csv", rows)
    _write_csv(out_dir / "cases.csv", case_rows)
    fileio.write_json(out_dir / "metrics.json", summary)  # last: its presence marks the evaluation complete
    progress_file.update("done", 1, 1)
    return summary


PROGRESS = "progress.json"
CASES_NOTE = ("per case, at the threshold where 5% of healthy calibration pixels are flagged; Dice, precision and "
              "recall inside the eroded brain mask; volumes at working resolution from the voxel spacing "
              "(tumour: every labelled voxel of the kept slices; detected: flagged voxels inside the brain mask)")


class ProgressFile:
    """``progress.json`` in the output folder: {phase, done, total, updated}, replaced atomically at most
    twice a second, so the app can draw a progress bar for a background evaluation."""

    def __init__(self, path: Path):
        self.path = path
        self._last = 0.0

    def update(self, phase: str, done: int, total: int) -> None:
        now = time.time()
        if phase not in ("done", "summarising") and done not in (0, total) and now - self._last < 0.5:
            return
        self._last = now
        fileio.write_json(self.path, {"phase": phase, "done": int(done), "total": int(total), "updated": now})


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
    first_thr = (at_rate(tallies[scorers[0].name].thresholds, report.CASE_RATE) or {}).get("threshold") if scorers else None
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


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fileio.write_text(path, buf.getvalue())
