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

from uad import checkpoints, fileio, metrics
from uad.data.demo import resolve_data_root
from uad.data.splits import split_cases
from uad.data.store import SliceStore, build_store
from uad.errors import ConfigError
from uad.score import BASELINES, ModelScorer, PostprocessConfig, baseline, score_slices, threshold_maps, write_nifti

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
    trained = info.get("data", {})
    if trained.get("demo", False) or not trained.get("root"):
        return resolve_data_root(None)
    root = Path(trained["root"])
    if not root.is_dir():
        raise ConfigError(f"the checkpoint's training data {root} is not here; pass --data DIR")
    return root


def split_for(store: SliceStore, info: dict[str, Any], split: str) -> tuple[list[str], list[str]]:
    """(cases to evaluate, cases whose healthy slices calibrate thresholds), by the checkpoint's split recipe."""
    if split not in SPLIT_CHOICES:
        raise ConfigError(f"split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    labelled = [c for c in store.case_ids if store.case(c).labelled]
    unlabelled = [c for c in store.case_ids if c not in set(labelled)]
    recipe = info.get("split", {})
    parts = split_cases(labelled, recipe.get("ratios", (0.7, 0.1, 0.2)), recipe.get("seed", 0))
    calibration = parts["val"] or parts["train"]
    if split == "all":
        return labelled + unlabelled, calibration
    # Unlabelled cases are scored with the test split (they have no label to leak), never counted.
    return parts[split] + (unlabelled if split == "test" else []), calibration


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
    """Evaluate a run or checkpoint folder; writes metrics.json, slices.csv and curves.json; returns the metrics."""
    from tqdm.auto import tqdm

    ckpt = checkpoints.load(run, device=device)
    root = data_root_for(ckpt.info, data)
    store = build_store(root, ckpt.preprocess, progress=progress)
    eval_cases, calib_cases = split_for(store, ckpt.info, split)
    if not eval_cases:
        raise ConfigError(f"no case in the {split} split of {root}")
    out_dir = Path(out) if out else Path(run) / "eval"
    scorers = [ModelScorer(ckpt.model, device=device)] + [baseline(b) for b in BASELINES]

    # 1. Label-free thresholds from healthy validation pixels only.
    tallies: dict[str, _Tally] = {}
    for scorer in scorers:
        healthy = metrics.PixelAccumulator()
        for cid in calib_cases:
            case = store.case(cid)
            ok = ~case.table.label.to_numpy()
            if ok.any():
                vs = _score_case(scorer, case, post, ok)
                healthy.update_healthy(vs.maps, vs.mask)
        tallies[scorer.name] = _Tally(thresholds=metrics.healthy_fpr_thresholds(healthy))

    # 2. Score every evaluated slice with every scorer.
    rows: list[dict[str, Any]] = []
    for cid in tqdm(eval_cases, desc="evaluating", unit="case", disable=not progress):
        case = store.case(cid)
        table = case.table
        per_case_scores = {}
        for scorer in scorers:
            vs = _score_case(scorer, case, post)
            per_case_scores[scorer.name] = vs.scores
            if save_maps and scorer is scorers[0]:
                write_nifti(vs.maps, case.geometry, out_dir / "maps" / f"{cid}_anomaly.nii.gz")
            if case.labelled:
                _tally_case(tallies[scorer.name], cid, table.label.to_numpy(), vs, np.asarray(case.tumour), post)
        for i, r in enumerate(table.itertuples()):
            rows.append({
                "case_id": cid, "slice_index": int(r.slice_index),
                "label": int(r.label) if case.labelled else "", "tumour_pixels": int(r.tumour_pixels) if case.labelled else "",
                "brain_pixels": int(r.brain_pixels), "score": float(per_case_scores[scorers[0].name][i]),
                **{f"score_{b}": float(per_case_scores[b][i]) for b in BASELINES},
            })

    # 3. Metrics, with patient-level bootstrap intervals.
    results: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, tally in tallies.items():
        results[name], curves[name] = _summarise(tally, n_boot, seed)
    model_name = scorers[0].name
    summary = {
        "model": model_name,
        "checkpoint": str(ckpt.path),
        "data_root": str(root),
        "split": split,
        "eval_cases": eval_cases,
        "calibration_cases": calib_cases,
        "n_slices": len(rows),
        "n_labelled_cases": sum(1 for c in eval_cases if store.case(c).labelled),
        "n_unlabelled_cases": sum(1 for c in eval_cases if not store.case(c).labelled),
        "preprocess": ckpt.preprocess.to_dict(),
        "postprocess": post.to_dict(),
        "pixel_metrics_note": "exact up to 10,000 score bins on [0, 1]; pixels inside the eroded brain mask",
        "best_dice_note": metrics.ORACLE_NOTE,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "unit": "patient"},
        **results[model_name],
        "baselines": {b: results[b] for b in BASELINES},
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    fileio.write_json(out_dir / "metrics.json", summary)
    fileio.write_json(out_dir / "curves.json", curves)
    _write_csv(out_dir / "slices.csv", rows)
    return summary


def _score_case(scorer, case, post: PostprocessConfig, rows: np.ndarray | None = None):
    images, brain, pixels = case.images, case.brain, case.table.brain_pixels.to_numpy()
    if rows is not None:
        images, brain, pixels = images[rows], brain[rows], pixels[rows]
    return score_slices(scorer, images, brain, pixels, post)


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


def _summarise(t: _Tally, n_boot: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
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
        })
    result = {
        "slice_auroc": sm["auroc"], "slice_ap": sm["ap"],
        "slice_auroc_ci": _ci(metrics.bootstrap_slice_metric(t.case_ids, labels, scores, "auroc", n_boot=n_boot, seed=seed)) if len(labels) else None,
        "slice_youden": metrics.threshold_youden(labels, scores),
        "slice_best_f1": metrics.threshold_best_f1(labels, scores),
        "pixel_auroc": pix["auroc"], "pixel_ap": pix["ap"],
        "pixel_ap_ci": _ci(metrics.bootstrap_pixel(np.stack(t.case_pos)[sort_idx], np.stack(t.case_neg)[sort_idx], "ap", n_boot=n_boot, seed=seed)) if t.case_pos else None,
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
