"""Evaluation metrics: slice level, streaming pixel level, label-free thresholds, patient bootstrap.

Pure numpy / scikit-learn: no torch, no file I/O. Public functions return plain Python floats, ints,
lists and dicts so results go straight into JSON.

Conventions shared by every function here:

* A sample (slice or pixel) is **predicted anomalous when ``score >= threshold``** (scikit-learn's rule).
* Labels are 0/1 (or bool); 1 = anomalous (tumour).
* A metric that is undefined (AUROC with one class, precision with no predicted positives, Dice of two
  empty masks) is ``float("nan")``, usually with a ``"reason"`` string beside it; it never raises.
  A curve point meaning "predict nothing positive" has threshold ``+inf``. Standard JSON has neither
  NaN nor Infinity: ``uad.fileio.write_json`` turns them into null.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

MAX_CURVE_POINTS = 1000
DEFAULT_FPR_RATES = (0.01, 0.05, 0.10)
DEFAULT_BINS = 10_000
NAN = float("nan")

ORACLE_NOTE = "threshold chosen on the evaluated labels (oracle): an upper bound, not a deployable result"

Dict = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Small shared helpers


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is empty (an undefined rate, not zero)."""
    return float(num) / float(den) if den > 0 else NAN


def _single_class_reason(n_pos: int, n_neg: int) -> str | None:
    if n_pos == 0 and n_neg == 0:
        return "no samples"
    if n_pos == 0:
        return "no anomalous (positive) samples: metric undefined"
    if n_neg == 0:
        return "no normal (negative) samples: metric undefined"
    return None


def _labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten to (bool labels, float64 scores)."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {y.size} vs {s.size}")
    if y.dtype != bool:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0/1 or bool")
        y = y.astype(bool)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return y, s


def _counts_point(threshold: float, tn: int, fp: int, fn: int, tp: int) -> Dict:
    """The operating-point dict shared by slice and pixel level."""
    return {
        "threshold": float(threshold),
        "tn": int(tn),
        "fp": int(fp),
        "fn": int(fn),
        "tp": int(tp),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "fpr": _ratio(fp, fp + tn),
        # 2TP/(2TP+FP+FN) instead of 2PR/(P+R): stays defined when precision is undefined.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


def _downsample_idx(x: np.ndarray, y: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` curve points, evenly spaced along the curve's length.

    Spacing by arc length (not by index) keeps steep parts of the curve visible; deterministic, and
    the first and last points are always kept.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2 (both endpoints are kept), got {max_points}")
    n = len(x)
    if n <= max_points:
        return np.arange(n)
    length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    if length[-1] > 0:
        idx = np.searchsorted(length, np.linspace(0.0, length[-1], max_points - 1))
    else:
        idx = np.linspace(0, n - 1, max_points - 1).round().astype(np.intp)
    idx = np.clip(idx, 0, n - 1)
    # max_points - 1 targets + the forced last point keeps the total within max_points.
    return np.unique(np.concatenate([[0], idx, [n - 1]]))


def _curve(x_name: str, x: np.ndarray, y_name: str, y: np.ndarray, thresholds: np.ndarray,
           max_points: int) -> Dict:
    idx = _downsample_idx(x, y, max_points)
    return {
        x_name: x[idx].astype(float).tolist(),
        y_name: y[idx].astype(float).tolist(),
        "thresholds": thresholds[idx].astype(float).tolist(),
    }


# --------------------------------------------------------------------------------------------------
# Slice level (in memory: one score per slice)


def slice_metrics(labels: Any, scores: Any, max_points: int = MAX_CURVE_POINTS) -> Dict:
    """AUROC, AP and downsampled ROC / PR curves of per-slice scores.

    ``roc`` = {fpr, tpr, thresholds} in sklearn order (threshold decreasing, first is +inf);
    ``pr`` = {recall, precision, thresholds} in sklearn order (threshold increasing), its last point
    (recall 0, precision 1) given threshold +inf. With one class only, auroc/ap are NaN, curves None.
    """
    y, s = _labels_scores(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    out: Dict = {"n": int(y.size), "n_pos": n_pos, "n_neg": n_neg}
    reason = _single_class_reason(n_pos, n_neg)
    if reason is not None:
        return {**out, "auroc": NAN, "ap": NAN, "reason": reason, "roc": None, "pr": None}
    fpr, tpr, roc_thr = roc_curve(y, s)
    precision, recall, pr_thr = precision_recall_curve(y, s)
    pr_thr = np.append(pr_thr, np.inf)  # sklearn's final (recall 0, precision 1) point has none
    return {
        **out,
        "auroc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "reason": None,
        "roc": _curve("fpr", fpr, "tpr", tpr, roc_thr, max_points),
        "pr": _curve("recall", recall, "precision", precision, pr_thr, max_points),
    }


def operating_point(labels: Any, scores: Any, threshold: float) -> Dict:
    """Confusion matrix (tn, fp, fn, tp) and precision/recall/f1/specificity/fpr at ``threshold``.

    About 4 ms for 10k slices, fast enough to follow a threshold slider."""
    y, s = _labels_scores(labels, scores)
    tn, fp, fn, tp = confusion_matrix(y, s >= threshold, labels=[False, True]).ravel()
    return _counts_point(threshold, tn, fp, fn, tp)


def _undefined_threshold(reason: str) -> Dict:
    """Same keys as an operating point, everything undefined (counts None, rates NaN)."""
    point: Dict = {k: NAN for k in _counts_point(NAN, 0, 0, 0, 0)}
    point.update(tn=None, fp=None, fn=None, tp=None, reason=reason)
    return point


def threshold_youden(labels: Any, scores: Any) -> Dict:
    """Threshold maximising Youden's J = TPR - FPR, with its operating point (chosen on these labels)."""
    y, s = _labels_scores(labels, scores)
    reason = _single_class_reason(int(y.sum()), int(y.size - y.sum()))
    if reason is not None:
        return {**_undefined_threshold(reason), "youden_j": NAN}
    fpr, tpr, thr = roc_curve(y, s)
    i = int(np.argmax(tpr - fpr))  # first maximum = highest threshold among ties
    return {**operating_point(y, s, float(thr[i])), "youden_j": float(tpr[i] - fpr[i]), "reason": None}


def threshold_best_f1(labels: Any, scores: Any) -> Dict:
    """Threshold maximising F1, with its operating point (chosen on these labels)."""
    y, s = _labels_scores(labels, scores)
    reason = _single_class_reason(int(y.sum()), int(y.size - y.sum()))
    if reason is not None:
        return _undefined_threshold(reason)
    precision, recall, thr = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]  # the last PR point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    i = int(np.argmax(f1))
    return {**operating_point(y, s, float(thr[i])), "reason": None}


# --------------------------------------------------------------------------------------------------
# Histogram metrics. Arrays hold counts per bin on the last axis (leading axes = a batch, e.g.
# bootstrap resamples). Bin k covers [e_k, e_{k+1}); thresholding at edge e_k predicts bins >= k.


def _count_at_or_above(hist: np.ndarray) -> np.ndarray:
    """(..., B) counts -> (..., B + 1): number of samples in bins >= k, for each edge k = 0..B."""
    hist = np.asarray(hist, dtype=np.float64)
    above = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    return np.concatenate([above, np.zeros(hist.shape[:-1] + (1,))], axis=-1)


def _binned_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of binned scores, ties within a bin counted 1/2 (what sklearn does for tied scores).

    Mann-Whitney form: sum over bins of neg_k * (positives in higher bins + pos_k / 2) / (P * N).
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    tp = _count_at_or_above(pos)
    n_pos, n_neg = tp[..., 0], neg.sum(axis=-1)
    wins = np.sum(neg * (tp[..., 1:] + pos / 2.0), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def _binned_ap(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision on binned scores, sklearn's definition AP = sum_n (R_n - R_{n-1}) P_n.

    Lowering the threshold past bin k raises recall by pos_k / P, so AP = sum_k pos_k * prec_k / P
    with prec_k the precision at edge k (bins with no positives add nothing).
    """
    pos = np.asarray(pos, dtype=np.float64)
    tp = _count_at_or_above(pos)[..., :-1]
    predicted = tp + _count_at_or_above(neg)[..., :-1]
    n_pos = tp[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        ap = np.sum(pos * precision, axis=-1) / n_pos
    return np.where((n_pos > 0) & (predicted[..., 0] > tp[..., 0]), ap, np.nan)


def _binned_dice(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """(..., B + 1) Dice = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P) at every edge; NaN if P = 0."""
    tp = _count_at_or_above(pos)
    fp = _count_at_or_above(neg)
    n_pos = tp[..., :1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, 2 * tp / (tp + fp + n_pos), np.nan)


def _binned_best_dice(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    dice = _binned_dice(pos, neg)
    return np.max(dice, axis=-1)  # NaN rows (no positives) stay NaN


_PIXEL_STATS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "ap": _binned_ap,
    "auroc": _binned_auroc,
    "best_dice": _binned_best_dice,
}


# --------------------------------------------------------------------------------------------------
# Pixel level, streaming


class PixelAccumulator:
    """Streaming pixel-level metrics from fixed-bin histograms of anomaly scores.

    Feed it batches (one slice, one volume, ...) of scores, ground-truth masks and brain masks with
    :meth:`update`; only pixels inside the brain mask count. Memory is two int64 histograms, whatever
    the data size. Scores are binned into ``n_bins`` equal bins over ``score_range``; scores beyond
    the range are clipped into the end bins (and counted in ``n_clipped_low`` / ``n_clipped_high``).

    All metrics are **exact up to the score binning**: they equal what scikit-learn gives when each
    score is replaced by its bin index (AUROC with ties counted 1/2, AP = sum (R_n - R_{n-1}) P_n), and
    thresholds are bin edges. With 10k bins over the real score range the difference to unbinned
    metrics is far below the bootstrap uncertainty.
    """

    def __init__(self, score_range: tuple[float, float] = (0.0, 1.0), n_bins: int = DEFAULT_BINS):
        lo, hi = float(score_range[0]), float(score_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"score_range must be finite with lo < hi, got {score_range}")
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.score_range = (lo, hi)
        self.n_bins = int(n_bins)
        self.pos = np.zeros(self.n_bins, dtype=np.int64)
        self.neg = np.zeros(self.n_bins, dtype=np.int64)
        self.n_clipped_low = 0
        self.n_clipped_high = 0

    # -- construction / combination

    @classmethod
    def from_histograms(cls, pos: Any, neg: Any, score_range: tuple[float, float] = (0.0, 1.0)
                        ) -> "PixelAccumulator":
        """An accumulator holding given positive / negative bin counts (e.g. summed per-case ones)."""
        pos = np.asarray(pos, dtype=np.int64)
        neg = np.asarray(neg, dtype=np.int64)
        if pos.ndim != 1 or pos.shape != neg.shape:
            raise ValueError(f"pos and neg must be 1-D of equal length, got {pos.shape}, {neg.shape}")
        acc = cls(score_range, pos.size)
        acc.pos += pos
        acc.neg += neg
        return acc

    def merge(self, other: "PixelAccumulator") -> "PixelAccumulator":
        """Add another accumulator's counts into this one (same bins required); returns self."""
        if other.score_range != self.score_range or other.n_bins != self.n_bins:
            raise ValueError(
                f"cannot merge accumulators with different bins: {self.score_range}/{self.n_bins} "
                f"vs {other.score_range}/{other.n_bins}")
        self.pos += other.pos
        self.neg += other.neg
        self.n_clipped_low += other.n_clipped_low
        self.n_clipped_high += other.n_clipped_high
        return self

    # -- feeding

    def update(self, scores: Any, gt_mask: Any, brain_mask: Any = None) -> None:
        """Count the pixels of one batch; ``gt_mask`` > 0 is tumour; ``brain_mask`` None = all pixels."""
        s = np.asarray(scores)
        g = np.asarray(gt_mask)
        if g.shape != s.shape:
            raise ValueError(f"scores {s.shape} and gt_mask {g.shape} differ in shape")
        if brain_mask is not None:
            b = np.asarray(brain_mask, dtype=bool)
            if b.shape != s.shape:
                raise ValueError(f"scores {s.shape} and brain_mask {b.shape} differ in shape")
            s, g = s[b], g[b]
        idx = self._bin_index(s.ravel())
        # One bincount for both classes: positives are offset by n_bins.
        counts = np.bincount(idx + self.n_bins * (g.ravel() > 0), minlength=2 * self.n_bins)
        self.neg += counts[: self.n_bins]
        self.pos += counts[self.n_bins:]

    def update_healthy(self, scores: Any, brain_mask: Any = None) -> None:
        """Count pixels known to be healthy (all negatives), e.g. for label-free thresholds."""
        s = np.asarray(scores)
        self.update(s, np.zeros(s.shape, dtype=bool), brain_mask)

    def _bin_index(self, s: np.ndarray) -> np.ndarray:
        s = s.astype(np.float64, copy=False)
        if np.isnan(s).any():
            raise ValueError("anomaly scores contain NaN")
        lo, hi = self.score_range
        self.n_clipped_low += int(np.count_nonzero(s < lo))
        self.n_clipped_high += int(np.count_nonzero(s > hi))
        x = (s - lo) * (self.n_bins / (hi - lo))
        # Clip before the cast so out-of-range and inf scores land in the end bins.
        return np.clip(x, 0, self.n_bins - 1).astype(np.intp)

    # -- reading

    @property
    def edges(self) -> np.ndarray:
        """The n_bins + 1 bin edges; thresholds are always one of these."""
        return np.linspace(self.score_range[0], self.score_range[1], self.n_bins + 1)

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    def _edge_index(self, threshold: float) -> int:
        lo, hi = self.score_range
        if math.isnan(threshold):
            raise ValueError("threshold is NaN")
        if threshold == math.inf:
            return self.n_bins
        return int(np.clip(np.rint((threshold - lo) / (hi - lo) * self.n_bins), 0, self.n_bins))

    def _point(self, k: int) -> Dict:
        tp, fp = int(self.pos[k:].sum()), int(self.neg[k:].sum())
        point = _counts_point(self.edges[k], self.n_neg - fp, fp, self.n_pos - tp, tp)
        point["dice"] = point["f1"]  # pooled over pixels, Dice and F1 are the same number
        return point

    def at_threshold(self, threshold: float) -> Dict:
        """Dice/precision/recall/f1/fpr and counts at ``threshold`` (snapped to the nearest bin edge;
        the dict's ``threshold`` is the edge used, ``requested_threshold`` the one asked for)."""
        return {**self._point(self._edge_index(threshold)), "requested_threshold": float(threshold)}

    def quantile(self, q: float, which: str = "all") -> float:
        """The ``q`` quantile (0..1) of the scores seen (``"all"``, or only ``"neg"``/``"pos"`` pixels), as the
        upper edge of the bin it falls in; NaN with no pixels."""
        counts = {"all": self.pos + self.neg, "neg": self.neg, "pos": self.pos}[which]
        n = int(counts.sum())
        if n == 0:
            return NAN
        k = int(np.searchsorted(np.cumsum(counts), q * n, side="left"))
        return float(self.edges[min(k + 1, self.n_bins)])

    def exceedance(self, threshold: float, which: str = "neg") -> float:
        """Fraction of the pixels seen (``"neg"`` by default) scoring at or above ``threshold`` (snapped to a bin edge)."""
        counts = {"all": self.pos + self.neg, "neg": self.neg, "pos": self.pos}[which]
        n = int(counts.sum())
        return float(counts[self._edge_index(threshold):].sum()) / n if n else NAN

    def auroc(self) -> float:
        return float(_binned_auroc(self.pos, self.neg))

    def ap(self) -> float:
        return float(_binned_ap(self.pos, self.neg))

    def best_dice(self) -> Dict:
        """Max Dice over all bin-edge thresholds, with its operating point. An oracle: the threshold
        is chosen by looking at the labels being evaluated."""
        if self.n_pos == 0:
            return {**_counts_point(NAN, self.n_neg, 0, 0, 0), "dice": NAN, "oracle": True,
                    "note": ORACLE_NOTE, "reason": "no tumour pixels: Dice undefined"}
        # Among tied edges (runs of empty bins) take the highest: the lower edge of a non-empty bin.
        k = self.n_bins - int(np.argmax(_binned_dice(self.pos, self.neg)[::-1]))
        return {**self._point(k), "oracle": True, "note": ORACLE_NOTE, "reason": None}

    def roc_curve(self, max_points: int = MAX_CURVE_POINTS) -> Dict | None:
        """{fpr, tpr, thresholds}, threshold decreasing; None with one class only."""
        if _single_class_reason(self.n_pos, self.n_neg) is not None:
            return None
        tp, fp = _count_at_or_above(self.pos), _count_at_or_above(self.neg)
        # Edges inside a run of empty bins repeat the same point: keep the lower edge of each
        # non-empty bin, plus the top edge ("nothing positive").
        keep = np.append(np.flatnonzero(self.pos + self.neg), self.n_bins)[::-1]
        return _curve("fpr", fp[keep] / self.n_neg, "tpr", tp[keep] / self.n_pos, self.edges[keep],
                      max_points)

    def pr_curve(self, max_points: int = MAX_CURVE_POINTS) -> Dict | None:
        """{recall, precision, thresholds}, threshold increasing, ending at (recall 0, precision 1,
        threshold +inf) like sklearn; None with one class only."""
        if _single_class_reason(self.n_pos, self.n_neg) is not None:
            return None
        tp, fp = _count_at_or_above(self.pos), _count_at_or_above(self.neg)
        keep = np.flatnonzero(self.pos + self.neg)  # every kept edge predicts >= 1 pixel positive
        recall = np.append(tp[keep] / self.n_pos, 0.0)
        precision = np.append(tp[keep] / (tp[keep] + fp[keep]), 1.0)
        thresholds = np.append(self.edges[keep], np.inf)
        return _curve("recall", recall, "precision", precision, thresholds, max_points)

    def summary(self, max_points: int = MAX_CURVE_POINTS) -> Dict:
        """Everything at once: counts, auroc, ap, best Dice (oracle), ROC and PR curves."""
        return {
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "score_range": list(self.score_range),
            "n_bins": self.n_bins,
            "n_clipped_low": self.n_clipped_low,
            "n_clipped_high": self.n_clipped_high,
            "auroc": self.auroc(),
            "ap": self.ap(),
            "reason": _single_class_reason(self.n_pos, self.n_neg),
            "best_dice": self.best_dice(),
            "roc": self.roc_curve(max_points),
            "pr": self.pr_curve(max_points),
        }


# --------------------------------------------------------------------------------------------------
# Label-free thresholds


def healthy_fpr_thresholds(healthy: PixelAccumulator | Any,
                           rates: Sequence[float] = DEFAULT_FPR_RATES) -> list[Dict]:
    """Thresholds at which a fraction ``rate`` of healthy pixels scores at or above them.

    ``healthy`` is a :class:`PixelAccumulator` (streaming; only its negative histogram is used, so
    tumour pixels fed with their labels do not move the thresholds) or an array of healthy pixel
    scores (in memory; the exact (1 - rate) quantile). From a histogram the threshold is the lowest
    bin edge whose exceedance is <= rate, so the healthy FPR is at most ``rate`` on the data seen.
    Returns one dict per rate: ``rate``, ``threshold``, ``healthy_fpr`` (achieved on these data).
    """
    for rate in rates:
        if not 0.0 < float(rate) < 1.0:
            raise ValueError(f"rates must lie in (0, 1), got {rate}")
    if isinstance(healthy, PixelAccumulator):
        return _hist_fpr_thresholds(healthy, rates)
    s = np.asarray(healthy, dtype=np.float64).ravel()
    if s.size == 0:
        return [{"rate": float(r), "threshold": NAN, "achieved_fpr": NAN,
                 "reason": "no healthy pixels"} for r in rates]
    out = []
    for rate in rates:
        t = float(np.quantile(s, 1.0 - float(rate)))
        out.append({"rate": float(rate), "threshold": t,
                    "achieved_fpr": float(np.mean(s >= t)), "reason": None})
    return out


def _hist_fpr_thresholds(acc: PixelAccumulator, rates: Sequence[float]) -> list[Dict]:
    exceed = _count_at_or_above(acc.neg)
    n = exceed[0]
    out = []
    for rate in rates:
        if n == 0:
            out.append({"rate": float(rate), "threshold": NAN, "achieved_fpr": NAN,
                        "reason": "no healthy pixels"})
            continue
        k = int(np.argmax(exceed <= float(rate) * n))  # exceed is non-increasing and ends at 0
        reason = None
        if k == acc.n_bins and acc.n_clipped_high > 0:
            reason = "score_range upper bound too low: the true threshold lies above it"
            warnings.warn(f"healthy_fpr_thresholds: {reason} ({acc.score_range})", stacklevel=2)
        out.append({"rate": float(rate), "threshold": float(acc.edges[k]),
                    "achieved_fpr": float(exceed[k] / n), "reason": reason})
    return out


# --------------------------------------------------------------------------------------------------
# Patient-level bootstrap


def _case_groups(case_ids: Any) -> list[np.ndarray]:
    """Row indices of each case, cases in sorted-id order (deterministic for a given input)."""
    ids = np.asarray(case_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("case_ids must be a non-empty 1-D sequence")
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def _draw_cases(n_cases: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_cases) case indices drawn with replacement. Shared by every bootstrap here, so
    slice and pixel intervals with the same seed and cases use the same patient resamples."""
    return np.random.default_rng(seed).integers(0, n_cases, size=(n_boot, n_cases))


def _interval(estimate: float, stats: np.ndarray, alpha: float, n_boot: int, seed: int) -> Dict:
    ok = stats[np.isfinite(stats)]
    low, high = (np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)]) if ok.size
                 else (NAN, NAN))
    return {"estimate": float(estimate), "low": float(low), "high": float(high), "alpha": float(alpha),
            "n_boot": int(n_boot), "n_used": int(ok.size), "seed": int(seed)}


def _check_boot_args(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def bootstrap_ci(case_ids: Any, statistic_fn: Callable[[np.ndarray], float], n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> Dict:
    """Percentile bootstrap CI of a statistic, resampling cases (patients) with replacement.

    ``case_ids[i]`` is the case of row i; ``statistic_fn(rows)`` gets row indices (with repeats: all
    rows of every drawn case) and returns a float; a non-finite value (e.g. one class drawn) skips
    that resample. Returns estimate (on all rows), low, high, n_used of n_boot. Deterministic per seed.
    """
    _check_boot_args(n_boot, alpha)
    groups = _case_groups(case_ids)
    estimate = float(statistic_fn(np.arange(sum(len(g) for g in groups))))
    stats = np.empty(n_boot)
    for b, drawn in enumerate(_draw_cases(len(groups), n_boot, seed)):
        stats[b] = float(statistic_fn(np.concatenate([groups[i] for i in drawn])))
    return _interval(estimate, stats, alpha, n_boot, seed)


def bootstrap_slice_metric(case_ids: Any, labels: Any, scores: Any, metric: str = "auroc",
                           n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> Dict:
    """Case-resampled CI of slice AUROC or AP; resamples holding one class only are skipped.

    Same resamples as :func:`bootstrap_ci` with the same seed and cases, and the same numbers as
    sklearn on each resample, but vectorised: per-case histograms over score ranks (see
    :func:`_rank_histograms`), resampled like :func:`bootstrap_pixel`. Memory ~ 16 bytes x cases x
    distinct scores (250 cases x 25k slices: 100 MB).
    """
    if metric not in ("auroc", "ap"):
        raise ValueError(f"metric must be 'auroc' or 'ap', got {metric!r}")
    pos, neg = _rank_histograms(case_ids, labels, scores)
    return _bootstrap_histograms(pos, neg, metric, n_boot, seed, alpha)


def _rank_histograms(case_ids: Any, labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-case (cases x distinct scores) counts of positive / negative rows, cases in sorted-id
    order. One bin per distinct score value loses nothing, so the histogram metrics are exact."""
    y, s = _labels_scores(labels, scores)
    ids = np.asarray(case_ids).ravel()
    if ids.size != y.size or ids.size == 0:
        raise ValueError("case_ids, labels and scores must be non-empty and equally long")
    _, case = np.unique(ids, return_inverse=True)
    _, rank = np.unique(s, return_inverse=True)
    n_cases, n_ranks = int(case.max()) + 1, int(rank.max()) + 1
    flat = case.ravel() * n_ranks + rank.ravel()
    size = n_cases * n_ranks
    pos = np.bincount(flat[y], minlength=size).reshape(n_cases, n_ranks)
    neg = np.bincount(flat[~y], minlength=size).reshape(n_cases, n_ranks)
    return pos, neg


def bootstrap_pixel(per_case_pos: Any, per_case_neg: Any, metric: str = "ap", n_boot: int = 1000,
                    seed: int = 0, alpha: float = 0.05) -> Dict:
    """Case-resampled CI of pixel AP / AUROC / best Dice from per-case histograms (cases x bins).

    A resample's histogram is the multiplicity-weighted sum of case histograms (a matrix product),
    so no pixel is revisited. Resamples without tumour pixels (or without healthy ones) are skipped.
    Rows must be in sorted case-id order for the resamples to equal those of the slice bootstrap.
    Use the bins of the PixelAccumulators the rows came from (``acc.pos`` / ``acc.neg``); a coarser
    n_bins (e.g. 1000) keeps per-case storage small.
    """
    if metric not in _PIXEL_STATS:
        raise ValueError(f"metric must be one of {sorted(_PIXEL_STATS)}, got {metric!r}")
    return _bootstrap_histograms(per_case_pos, per_case_neg, metric, n_boot, seed, alpha)


def _bootstrap_histograms(per_case_pos: Any, per_case_neg: Any, metric: str, n_boot: int,
                          seed: int, alpha: float) -> Dict:
    _check_boot_args(n_boot, alpha)
    pos = np.asarray(per_case_pos, dtype=np.float64)  # float64: exact counts up to 2**53, BLAS matmul
    neg = np.asarray(per_case_neg, dtype=np.float64)
    if pos.ndim != 2 or pos.shape != neg.shape or pos.shape[0] == 0:
        raise ValueError(f"per-case histograms must be (cases, bins) and equal, got {pos.shape}, "
                         f"{neg.shape}")
    fn = _PIXEL_STATS[metric]
    n_cases = pos.shape[0]
    estimate = float(fn(pos.sum(axis=0), neg.sum(axis=0)))
    all_drawn = _draw_cases(n_cases, n_boot, seed)
    stats = np.empty(n_boot)
    chunk = 64  # bounds the (chunk x bins) resampled histograms in memory
    for start in range(0, n_boot, chunk):
        drawn = all_drawn[start:start + chunk]
        m = len(drawn)
        # weights[b, c] = how many times case c was drawn in resample b
        flat = (drawn + n_cases * np.arange(m)[:, None]).ravel()
        weights = np.bincount(flat, minlength=m * n_cases).reshape(m, n_cases).astype(np.float64)
        stats[start:start + m] = fn(weights @ pos, weights @ neg)
    return {**_interval(estimate, stats, alpha, n_boot, seed), "metric": metric}


# --------------------------------------------------------------------------------------------------
# Masks


def dice(pred_mask: Any, gt_mask: Any) -> float:
    """Dice of two binary masks (nonzero = foreground). Two empty masks give NaN (nothing to
    overlap; the app shows "-"), not 1, so empty slices do not inflate mean Dice."""
    p = np.asarray(pred_mask) != 0
    g = np.asarray(gt_mask) != 0
    if p.shape != g.shape:
        raise ValueError(f"masks differ in shape: {p.shape} vs {g.shape}")
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    return 2.0 * int(np.count_nonzero(p & g)) / total if total else NAN


# --------------------------------------------------------------------------------------------------
# Paired patient bootstrap: is method A better than method B on the same patients?


def _resample_weights(n_cases: int, n_boot: int, seed: int, chunk: int = 64):
    """(m, n_cases) multiplicity matrices of the patient resamples, ``chunk`` at a time: the same draws as every
    single-method bootstrap here with the same seed and cases (``_draw_cases``)."""
    drawn_all = _draw_cases(n_cases, n_boot, seed)
    for start in range(0, n_boot, chunk):
        drawn = drawn_all[start:start + chunk]
        m = len(drawn)
        flat = (drawn + n_cases * np.arange(m)[:, None]).ravel()
        yield start, np.bincount(flat, minlength=m * n_cases).reshape(m, n_cases).astype(np.float64)


def paired_bootstrap(stat_a: Callable[[np.ndarray], np.ndarray], stat_b: Callable[[np.ndarray], np.ndarray],
                     n_cases: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> Dict:
    """Percentile interval of ``stat_a − stat_b`` over patient resamples, both methods on each same resample.

    ``stat_x(W)`` gets a (m, n_cases) matrix of case multiplicities (a row per resample; a row of ones is the
    full data) and returns m statistics; per-case sums (histograms, confusion counts) make that a matrix
    product. Because both methods see the same easy and hard patients in every resample, the interval of
    the difference is much narrower than two separate intervals suggest (Efron & Tibshirani). Resamples
    where either statistic is undefined are skipped. Returns a, b, diff (on all cases), low, high, n_used.
    """
    _check_boot_args(n_boot, alpha)
    if n_cases < 1:
        raise ValueError("paired_bootstrap needs at least one case")
    full = np.ones((1, n_cases))
    a, b = float(stat_a(full)[0]), float(stat_b(full)[0])
    diffs = np.empty(n_boot)
    for start, w in _resample_weights(n_cases, n_boot, seed):
        diffs[start:start + len(w)] = stat_a(w) - stat_b(w)
    out = _interval(a - b, diffs, alpha, n_boot, seed)
    return {"a": a, "b": b, "diff": out.pop("estimate"), **out}


def rank_histograms(case_ids: Any, labels: Any, scores: Any) -> tuple[list, np.ndarray, np.ndarray]:
    """(sorted case ids, per-case positive counts, per-case negative counts) over distinct score ranks: what a
    resampled slice AUROC/AP is computed from (exact: one bin per distinct score)."""
    pos, neg = _rank_histograms(case_ids, labels, scores)
    return sorted(set(np.asarray(case_ids).ravel().tolist())), pos, neg


SUMMED_STATS = {"auroc": _binned_auroc, "ap": _binned_ap, "best_dice": _binned_best_dice}
