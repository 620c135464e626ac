"""Overlap of a thresholded map with the ground truth: confusion counts, Dice, precision, recall.

One arithmetic for every consumer: the per-case table, the pooled operating points, Explore's numbers
(and the browser's copy of them, tested equal) and the HTML report's examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAN = float("nan")


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else NAN


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives of a prediction against the truth (voxels)."""

    tp: int
    fp: int
    fn: int

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray) -> "Counts":
        p, g = np.asarray(pred, bool), np.asarray(truth, bool)
        if p.shape != g.shape:
            raise ValueError(f"prediction and truth differ in shape: {p.shape} vs {g.shape}")
        tp = int(np.count_nonzero(p & g))
        return cls(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp)

    @property
    def dice(self) -> float:
        """2TP / (2TP + FP + FN); NaN when both prediction and truth are empty (nothing to overlap)."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)


def per_slice(pred: np.ndarray, truth: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per axial slice of (S, H, W) masks: flagged voxels, and with a truth its voxels and the slice's Dice
    (NaN where both are empty)."""
    p = np.asarray(pred, bool)
    out = {"flagged": p.sum(axis=(1, 2))}
    if truth is not None:
        g = np.asarray(truth, bool)
        tp = (p & g).sum(axis=(1, 2))
        out["tumour"] = g.sum(axis=(1, 2))
        den = out["flagged"] + out["tumour"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["dice"] = np.where(den > 0, 2.0 * tp / np.maximum(den, 1), NAN)
    return out
