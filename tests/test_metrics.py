"""Tests for uad.metrics: hand-computed cases, histogram metrics vs scikit-learn, streaming, bootstrap."""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from uad.core.fileio import json_safe
from uad.evaluation import metrics as M

# Hand example (slices). Negatives score 0.1, 0.4; positives 0.3, 0.5, 0.6, 0.7.
#   AUROC: positive 0.3 beats 1 negative, 0.5 / 0.6 / 0.7 beat both -> 7 of 8 pairs = 0.875.
#   AP (descending): 0.7, 0.6, 0.5 are positives at precision 1 (recall 0.75), then 0.4 (neg),
#     then 0.3 (pos) at precision 4/5, recall 1  ->  0.75 * 1 + 0.25 * 0.8 = 0.95.
#   Per threshold (score >= t):   t    tp fp  TPR   FPR  J     F1 = 2tp/(2tp+fp+fn)
#                                 0.7  1  0   .25   0    .25   2/5
#                                 0.6  2  0   .50   0    .50   4/6
#                                 0.5  3  0   .75   0    .75   6/7   <- Youden
#                                 0.4  3  1   .75   .5   .25   6/8
#                                 0.3  4  1   1     .5   .50   8/9   <- best F1
#                                 0.1  4  2   1     1    0     8/10
HAND_Y = np.array([0, 0, 1, 1, 1, 1])
HAND_S = np.array([0.1, 0.4, 0.3, 0.5, 0.6, 0.7])


@contextmanager
def _no_warnings() -> Iterator[None]:
    """Any warning (numpy divide-by-zero, sklearn) inside fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ------------------------------------------------------------------ slice level


def test_slice_metrics_hand_example():
    r = M.slice_metrics(HAND_Y, HAND_S)
    assert r["auroc"] == pytest.approx(0.875)
    assert r["ap"] == pytest.approx(0.95)
    assert (r["n"], r["n_pos"], r["n_neg"]) == (6, 4, 2)
    roc, pr = r["roc"], r["pr"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["thresholds"])
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    assert math.isinf(roc["thresholds"][0]) and math.isinf(pr["thresholds"][-1])
    json.dumps(json_safe(r), allow_nan=False)  # inf thresholds become null


def test_youden_best_f1_and_operating_point_hand_example():
    y = M.threshold_youden(HAND_Y, HAND_S)
    assert y["threshold"] == pytest.approx(0.5)
    assert y["youden_j"] == pytest.approx(0.75)
    assert (y["tn"], y["fp"], y["fn"], y["tp"]) == (2, 0, 1, 3)
    assert y["precision"] == 1.0 and y["recall"] == pytest.approx(0.75)
    assert y["specificity"] == 1.0 and y["f1"] == pytest.approx(6 / 7)

    f = M.threshold_best_f1(HAND_Y, HAND_S)
    assert f["threshold"] == pytest.approx(0.3)
    assert (f["tn"], f["fp"], f["fn"], f["tp"]) == (1, 1, 0, 4)
    assert f["f1"] == pytest.approx(8 / 9)
    assert f["precision"] == pytest.approx(0.8) and f["specificity"] == pytest.approx(0.5)

    # The rule is score >= t: at t = 0.4 the negative scoring 0.4 is a false positive.
    p = M.operating_point(HAND_Y, HAND_S, 0.4)
    assert (p["tn"], p["fp"], p["fn"], p["tp"]) == (1, 1, 1, 3)
    assert p["fpr"] == pytest.approx(0.5) and p["recall"] == pytest.approx(0.75)
    # Above every score nothing is predicted: precision undefined (NaN), not 0.
    top = M.operating_point(HAND_Y, HAND_S, 0.99)
    assert top["tp"] == top["fp"] == 0 and math.isnan(top["precision"]) and top["f1"] == 0.0


def test_slice_curves_downsampled_keep_endpoints_and_are_deterministic():
    rng = np.random.default_rng(3)
    y = rng.random(20_000) < 0.3
    s = rng.normal(size=y.size) + y
    a = M.slice_metrics(y, s, max_points=200)
    b = M.slice_metrics(y, s, max_points=200)
    assert a == b
    for curve, xk, yk in ((a["roc"], "fpr", "tpr"), (a["pr"], "recall", "precision")):
        assert 100 < len(curve[xk]) <= 200
    assert (a["roc"]["fpr"][0], a["roc"]["fpr"][-1]) == (0.0, 1.0)
    assert a["pr"]["recall"][-1] == 0.0 and a["pr"]["precision"][-1] == 1.0
    assert a["auroc"] == pytest.approx(roc_auc_score(y, s))


def test_degenerate_single_class_gives_nan_without_raising():
    with _no_warnings():
        r = M.slice_metrics([0, 0, 0], [0.1, 0.2, 0.3])
        assert math.isnan(r["auroc"]) and math.isnan(r["ap"]) and r["reason"]
        assert r["roc"] is None and r["pr"] is None
        assert math.isnan(M.slice_metrics([1, 1], [0.1, 0.2])["auroc"])
        assert math.isnan(M.threshold_youden([1, 1], [0.1, 0.2])["threshold"])
        assert math.isnan(M.threshold_best_f1([0, 0], [0.1, 0.2])["f1"])

        acc = M.PixelAccumulator(n_bins=100)
        acc.update_healthy(np.full((4, 4), 0.3))
        s = acc.summary()
        assert math.isnan(s["auroc"]) and math.isnan(s["ap"]) and s["reason"]
        assert math.isnan(s["best_dice"]["dice"]) and s["roc"] is None and s["pr"] is None
        empty = M.PixelAccumulator(n_bins=10).summary()
        assert math.isnan(empty["auroc"]) and empty["n_pos"] == empty["n_neg"] == 0
        assert math.isnan(M.healthy_fpr_thresholds(M.PixelAccumulator())[0]["threshold"])
        json.dumps(json_safe(s), allow_nan=False)
    with pytest.raises(ValueError):
        M.slice_metrics([0, 2], [0.1, 0.2])  # not binary labels: a bug, not a degenerate case


# ------------------------------------------------------------------ pixel level

# Hand example (pixels), 10 bins over (0, 1): tumour scores 0.85, 0.75, 0.45; healthy 0.65, 0.15,
# 0.25, 0.05.  AUROC: 0.85 and 0.75 beat all 4 healthy, 0.45 beats 3 -> 11/12.
#   AP: 0.85, 0.75 at precision 1 (recall 2/3), then 0.65 (healthy), then 0.45 at precision 3/4
#   -> 2/3 + 1/3 * 3/4 = 11/12.
#   Dice = 2TP/(2TP+FP+FN) at edge t: 0.8: 2/4, 0.7: 4/5, 0.6: 4/6, 0.5: 4/6, 0.4: 6/7 (best),
#   0.3 (empty bin, same as 0.4): 6/7, 0.2: 6/8, 0.1: 6/9.  Among ties the highest edge, 0.4, is used.
PIX_POS = [0.85, 0.75, 0.45]
PIX_NEG = [0.65, 0.15, 0.25, 0.05]


def _hand_accumulator() -> M.PixelAccumulator:
    acc = M.PixelAccumulator((0.0, 1.0), n_bins=10)
    acc.update(np.array(PIX_POS + PIX_NEG), np.array([1, 1, 1, 0, 0, 0, 0]))
    return acc


def test_pixel_hand_example_auroc_ap_best_dice():
    acc = _hand_accumulator()
    assert acc.auroc() == pytest.approx(11 / 12)
    assert acc.ap() == pytest.approx(11 / 12)
    best = acc.best_dice()
    assert best["dice"] == pytest.approx(6 / 7) and best["threshold"] == pytest.approx(0.4)
    assert (best["tp"], best["fp"], best["fn"], best["tn"]) == (3, 1, 0, 3)
    assert best["oracle"] is True and "oracle" in best["note"]
    at = acc.at_threshold(0.7)
    assert at["dice"] == pytest.approx(0.8) and at["precision"] == 1.0
    assert at["recall"] == pytest.approx(2 / 3) and at["fpr"] == 0.0
    # Thresholds snap to the nearest bin edge.
    assert acc.at_threshold(0.71)["threshold"] == pytest.approx(0.7)


def test_brain_mask_excludes_outside_pixels_and_clipping_is_counted():
    acc = M.PixelAccumulator((0.0, 1.0), n_bins=10)
    scores = np.array([[0.2, 5.0], [0.9, -1.0]])
    gt = np.array([[0, 1], [1, 0]])
    brain = np.array([[True, False], [True, True]])
    acc.update(scores, gt, brain)
    assert (acc.n_pos, acc.n_neg) == (1, 2)  # the 5.0 tumour pixel is outside the brain
    assert acc.neg[0] == 1 and acc.neg[2] == 1 and acc.pos[9] == 1
    assert (acc.n_clipped_low, acc.n_clipped_high) == (1, 0)
    acc.update(np.array([7.0]), np.array([1]))
    assert acc.pos[9] == 2 and acc.n_clipped_high == 1
    with pytest.raises(ValueError):
        acc.update(np.array([np.nan]), np.array([0]))


def _random_pixels(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    gt = rng.random(n) < 0.1
    scores = np.clip(rng.gamma(2.0, 0.08, n) + 0.15 * gt, 0, None)
    return scores, gt


def test_histogram_auroc_ap_match_sklearn():
    rng = np.random.default_rng(0)
    scores, gt = _random_pixels(rng, 50_000)
    acc = M.PixelAccumulator((0.0, 1.0), n_bins=10_000)
    acc.update(scores, gt)
    # Fine bins: close to sklearn on the raw scores.
    assert acc.auroc() == pytest.approx(roc_auc_score(gt, scores), abs=1e-3)
    assert acc.ap() == pytest.approx(average_precision_score(gt, scores), abs=1e-3)
    # Exact up to the binning: identical to sklearn on the bin index, even with coarse bins.
    coarse = M.PixelAccumulator((0.0, 1.0), n_bins=50)
    coarse.update(scores, gt)
    bin_index = np.clip(np.floor(scores * 50), 0, 49)
    assert coarse.auroc() == pytest.approx(roc_auc_score(gt, bin_index), abs=1e-12)
    assert coarse.ap() == pytest.approx(average_precision_score(gt, bin_index), abs=1e-12)


def test_histogram_best_dice_matches_brute_force_and_curves_are_bounded():
    rng = np.random.default_rng(1)
    scores, gt = _random_pixels(rng, 20_000)
    acc = M.PixelAccumulator((0.0, 1.0), n_bins=200)
    acc.update(scores, gt)
    edges = acc.edges
    brute = [M.dice(scores >= t, gt) for t in edges]
    best = acc.best_dice()
    # Same maximum (the brute force thresholds raw scores at the same edges).
    assert best["dice"] == pytest.approx(max(brute), abs=1e-3)
    s = acc.summary(max_points=50)
    for curve in (s["roc"], s["pr"]):
        assert all(len(v) <= 50 for v in curve.values())
    assert (s["roc"]["fpr"][0], s["roc"]["tpr"][0], s["roc"]["fpr"][-1]) == (0.0, 0.0, 1.0)
    assert s["pr"]["recall"][-1] == 0.0 and s["pr"]["recall"][0] == 1.0
    json.dumps(json_safe(s), allow_nan=False)


def test_merge_equals_single_accumulator():
    rng = np.random.default_rng(2)
    scores, gt = _random_pixels(rng, 30_000)
    brain = rng.random(scores.size) < 0.8
    whole = M.PixelAccumulator((0.0, 2.0), 1000)
    whole.update(scores, gt, brain)
    parts = [M.PixelAccumulator((0.0, 2.0), 1000) for _ in range(3)]
    for part, idx in zip(parts, np.array_split(np.arange(scores.size), 3)):
        part.update(scores[idx], gt[idx], brain[idx])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert np.array_equal(merged.pos, whole.pos) and np.array_equal(merged.neg, whole.neg)
    assert merged.summary() == whole.summary()
    with pytest.raises(ValueError):
        whole.merge(M.PixelAccumulator((0.0, 1.0), 1000))


# ------------------------------------------------------------------ label-free thresholds


def test_healthy_fpr_threshold_transfers_to_fresh_healthy_data():
    rng = np.random.default_rng(4)
    healthy_val = rng.gamma(2.0, 0.08, 400_000)
    healthy_test = rng.gamma(2.0, 0.08, 400_000)
    acc = M.PixelAccumulator((0.0, 1.0), 10_000)
    acc.update_healthy(healthy_val)
    result = M.healthy_fpr_thresholds(acc, rates=(0.01, 0.05, 0.10))
    for r in result:
        assert r["achieved_fpr"] <= r["rate"]  # conservative on the data it was fitted to
        fresh_fpr = float(np.mean(healthy_test >= r["threshold"]))
        assert fresh_fpr == pytest.approx(r["rate"], rel=0.1)
    # The in-memory path gives (nearly) the same thresholds.
    exact = M.healthy_fpr_thresholds(healthy_val, rates=(0.01, 0.05, 0.10))
    for r, e in zip(result, exact):
        assert r["threshold"] == pytest.approx(e["threshold"], abs=2e-4)


def test_healthy_fpr_threshold_ignores_tumour_pixels():
    rng = np.random.default_rng(5)
    healthy = rng.gamma(2.0, 0.08, 50_000)
    only_healthy = M.PixelAccumulator((0.0, 1.0), 1000)
    only_healthy.update_healthy(healthy)
    mixed = M.PixelAccumulator((0.0, 1.0), 1000)
    tumour = rng.uniform(0.5, 1.0, 20_000)
    mixed.update(np.concatenate([healthy, tumour]),
                 np.concatenate([np.zeros(healthy.size), np.ones(tumour.size)]))
    assert M.healthy_fpr_thresholds(mixed) == M.healthy_fpr_thresholds(only_healthy)
    # And the threshold is usable on the labelled accumulator: its FPR there is the healthy one.
    t = M.healthy_fpr_thresholds(mixed, rates=(0.05,))[0]
    assert mixed.at_threshold(t["threshold"])["fpr"] == pytest.approx(t["achieved_fpr"])


# ------------------------------------------------------------------ bootstrap


def _cases(rng: np.random.Generator, n_cases: int = 20, per_case: int = 30):
    case_ids = np.repeat([f"case{i:03d}" for i in range(n_cases)], per_case)
    labels = rng.random(case_ids.size) < 0.4
    scores = rng.normal(size=case_ids.size) + 1.2 * labels
    return case_ids, labels, scores


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    rng = np.random.default_rng(6)
    case_ids, labels, scores = _cases(rng)
    a = M.bootstrap_slice_metric(case_ids, labels, scores, "auroc", n_boot=200, seed=7)
    b = M.bootstrap_slice_metric(case_ids, labels, scores, "auroc", n_boot=200, seed=7)
    c = M.bootstrap_slice_metric(case_ids, labels, scores, "auroc", n_boot=200, seed=8)
    assert a == b and a != c
    assert a["estimate"] == pytest.approx(roc_auc_score(labels, scores))
    assert a["low"] <= a["estimate"] <= a["high"] and a["low"] < a["high"]
    assert a["n_used"] == 200
    ap = M.bootstrap_slice_metric(case_ids, labels, scores, "ap", n_boot=100, seed=7)
    assert ap["low"] <= ap["estimate"] <= ap["high"]


def test_fast_slice_bootstrap_equals_sklearn_on_each_resample():
    # The vectorised slice bootstrap must give exactly what sklearn gives on the same resamples.
    rng = np.random.default_rng(9)
    case_ids, labels, scores = _cases(rng, n_cases=8, per_case=10)
    scores = np.round(scores, 1)  # ties within and across cases
    for metric, fn in (("auroc", roc_auc_score), ("ap", average_precision_score)):
        fast = M.bootstrap_slice_metric(case_ids, labels, scores, metric, n_boot=60, seed=1)

        def stat(rows: np.ndarray) -> float:
            y = labels[rows]
            return float(fn(y, scores[rows])) if 0 < y.sum() < y.size else math.nan

        slow = M.bootstrap_ci(case_ids, stat, n_boot=60, seed=1)
        for key in ("estimate", "low", "high", "n_used"):
            assert fast[key] == pytest.approx(slow[key], abs=1e-12)


def test_bootstrap_skips_single_class_resamples():
    # Three cases, only one holds positives: a resample misses it with probability (2/3)^3 ~ 0.3.
    case_ids = np.repeat(["a", "b", "c"], 4)
    labels = np.array([0, 1, 0, 1] + [0] * 8)
    scores = np.arange(12.0)
    r = M.bootstrap_slice_metric(case_ids, labels, scores, n_boot=300, seed=0)
    assert 150 < r["n_used"] < 300


def test_bootstrap_pixel_matches_generic_bootstrap_on_rows():
    # Per-case histograms resampled by weights == resampling the cases' pixels themselves.
    rng = np.random.default_rng(8)
    n_cases, n_bins = 12, 40
    accs, pix_case, pix_s, pix_g = [], [], [], []
    for c in range(n_cases):
        s, g = _random_pixels(rng, 300)
        acc = M.PixelAccumulator((0.0, 1.0), n_bins)
        acc.update(s, g)
        accs.append(acc)
        pix_case.append(np.full(s.size, c))
        pix_s.append(np.clip(np.floor(s * n_bins), 0, n_bins - 1))
        pix_g.append(g)
    pos = np.stack([a.pos for a in accs])
    neg = np.stack([a.neg for a in accs])
    case_of_pixel, s, g = map(np.concatenate, (pix_case, pix_s, pix_g))

    fast = M.bootstrap_pixel(pos, neg, "ap", n_boot=100, seed=3)
    slow = M.bootstrap_ci(case_of_pixel, lambda rows: average_precision_score(g[rows], s[rows]),
                          n_boot=100, seed=3)
    for key in ("estimate", "low", "high"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-9)
    assert fast == M.bootstrap_pixel(pos, neg, "ap", n_boot=100, seed=3)
    for metric in ("auroc", "best_dice"):
        r = M.bootstrap_pixel(pos, neg, metric, n_boot=50, seed=0)
        assert r["low"] <= r["estimate"] <= r["high"] and r["n_used"] == 50
    merged = M.PixelAccumulator.from_histograms(pos.sum(0), neg.sum(0))
    assert fast["estimate"] == pytest.approx(merged.ap())


# ------------------------------------------------------------------ masks


def test_dice_of_masks():
    # pred {(0,0), (0,1)}, gt {(0,0), (1,0)}: overlap 1, sizes 2 + 2 -> Dice 2*1/4 = 0.5.
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    gt = np.array([[1, 0, 0], [1, 0, 0]])
    assert M.dice(pred, gt) == 0.5
    assert M.dice(gt, gt) == 1.0
    assert M.dice(np.zeros((2, 2)), np.ones((2, 2))) == 0.0
    assert math.isnan(M.dice(np.zeros((2, 2)), np.zeros((2, 2))))  # empty vs empty: undefined
    with pytest.raises(ValueError):
        M.dice(np.zeros((2, 2)), np.zeros((3, 3)))
