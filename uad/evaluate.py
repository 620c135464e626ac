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

from uad import checkpoints, fileio, metrics, paths
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
    trained = info.get("data", {})
    if trained.get("demo", False) or not trained.get("root"):
        return resolve_data_root(None)
    root = Path(trained["root"])
    if not root.is_absolute():  # shipped checkpoints record their data relative to the repository
        root = paths.REPO_ROOT / root
    if not root.is_dir():
        raise ConfigError(f"the checkpoint's training data {root} is not here; pass --data DIR")
    return root


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
    trained_root = info.get("data", {}).get("root")
    if root is None:
        same_data = True
    else:
        if info.get("data", {}).get("demo", False):
            trained_root = str(paths.demo_dir())
        elif trained_root is not None and not Path(trained_root).is_absolute():
            trained_root = str(paths.REPO_ROOT / trained_root)
        same_data = trained_root is not None and Path(trained_root).resolve() == Path(root).resolve()
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
    """Evaluate a run or checkpoint folder; writes metrics.json, slices.csv and curves.json; returns the metrics."""
    ckpt = checkpoints.load(run, device=device)
    root = data_root_for(ckpt.info, data)
    store = build_store(root, ckpt.preprocess, progress=progress)
    plan = split_for(store, ckpt.info, split, root if data is not None else None)
    if not plan.eval_cases:
        missing = f" (recorded but missing here: {', '.join(plan.missing)})" if plan.missing else ""
        raise ConfigError(f"no case of the {split} split is in {root}{missing}")
    out_dir = Path(out) if out else Path(run) / "eval"
    scorers = [ModelScorer(ckpt.model, device=device)] + [baseline(b) for b in BASELINES]
    tallies, rows = score_cohort(store, scorers, plan.eval_cases, plan.calibration_cases, post,
                                 maps_dir=out_dir / "maps" if save_maps else None, progress=progress)

    # Metrics, with patient-level bootstrap intervals.
    results: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, tally in tallies.items():
        results[name], curves[name] = summarise(tally, n_boot, seed)
    model_name = scorers[0].name
    summary = {
        "model": model_name,
        "checkpoint": str(ckpt.path),
        "data_root": str(root),
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
        "bootstrap": {"n_boot": n_boot, "seed": seed, "unit": "patient"},
        **results[model_name],
        "baselines": {b: results[b] for b in BASELINES},
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    fileio.write_json(out_dir / "metrics.json", summary)
    fileio.write_json(out_dir / "curves.json", curves)
    _write_csv(out_dir / "slices.csv", rows)
    return summary


def score_cohort(store: SliceStore, scorers: list, eval_cases: list[str], calib_cases: list[str],
                 post: PostprocessConfig, maps_dir: Path | None = None, progress: bool = False) -> tuple[dict[str, "_Tally"], list[dict]]:
    """Score ``eval_cases`` with every scorer; thresholds calibrated on the healthy slices of ``calib_cases``.

    The first scorer's maps go to ``maps_dir`` and its slice score fills the rows' ``score`` column; the
    others (the baselines) get ``score_<name>`` columns.
    """
    from tqdm.auto import tqdm

    # 1. Label-free thresholds from healthy validation pixels only.
    tallies: dict[str, _Tally] = {}
    for scorer in scorers:
        healthy = metrics.PixelAccumulator()
        for cid in calib_cases:
            case = store.case(cid)
            ok = ~case.label
            if ok.any():
                vs = score_case(scorer, case, post, ok)
                healthy.update_healthy(vs.maps, vs.mask)
            store.release(cid)
        tallies[scorer.name] = _Tally(thresholds=metrics.healthy_fpr_thresholds(healthy))

    # 2. Score every evaluated slice with every scorer.
    rows: list[dict[str, Any]] = []
    for cid in tqdm(eval_cases, desc="evaluating", unit="case", disable=not progress):
        case = store.case(cid)
        table = case.table
        per_case_scores = {}
        for scorer in scorers:
            vs = score_case(scorer, case, post)
            per_case_scores[scorer.name] = vs.scores
            if maps_dir is not None and scorer is scorers[0]:
                write_nifti(vs.maps, case.geometry, maps_dir / f"{cid}_anomaly.nii.gz")
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
    return tallies, rows


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
