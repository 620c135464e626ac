"""What a viewer shows of scored cases, computed here so the app and the HTML report only draw it: one colour
scale for several models, another run's maps on the primary run's slices, per-slice numbers at a threshold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from uad.data.preprocess import WorkingCase
from uad.scoring import overlap
from uad.scoring.maps import VolumeScores

COLOUR_PERCENTILE = 99.5  # the colour scale's top: this percentile of a map inside the brain, the largest over models


def colour_max(scored: Sequence[VolumeScores]) -> float:
    """One colour scale for every model shown on a case: the largest of their maps' 99.5th percentiles inside
    the brain (a few hot pixels do not wash out the rest), at least 1e-6."""
    tops = [float(np.percentile(vs.maps[vs.mask], COLOUR_PERCENTILE)) for vs in scored if vs.mask.any()]
    return max(tops + [1e-6])


def aligned(primary: WorkingCase, other: WorkingCase, other_scores: VolumeScores) -> VolumeScores | None:
    """Another run's scores of the same case on the primary run's slices: as they are when both runs cut the
    same slices and crop, resized (bilinear) when only the working size differs; None when the crops differ
    (another preprocessing), where no pixel of one corresponds to a pixel of the other."""
    a, b = primary.geometry, other.geometry
    if not (np.array_equal(a.kept, b.kept) and (a.top, a.left, a.side) == (b.top, b.left, b.side)):
        return None
    size = primary.images.shape[-1]
    if other_scores.maps.shape[-1] == size:
        return other_scores
    import cv2

    maps = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)
                     for m in other_scores.maps.astype(np.float32)])
    brain = np.asarray(primary.brain, bool)
    return VolumeScores(maps * brain, other_scores.scores, brain.copy(), None, other_scores.recipe)


def slice_numbers(scores: VolumeScores, case: WorkingCase, threshold: float) -> dict[str, np.ndarray]:
    """Per kept slice at ``threshold``: flagged voxels, and for a labelled case its tumour voxels (inside the
    eroded brain) and the slice's Dice (NaN where both are empty): what Explore shows beside each slice."""
    pred = scores.prediction(threshold)
    truth = (np.asarray(case.tumour, bool) & scores.mask) if case.labelled else None
    return overlap.per_slice(pred, truth)


def volume_counts(scores: VolumeScores, case: WorkingCase, threshold: float) -> overlap.Counts:
    """The whole case at ``threshold`` against its tumour (inside the eroded brain): Explore's per-volume Dice,
    computed exactly as the evaluation's per-case table (same recipe, same prediction, same mask)."""
    return overlap.Counts.of(scores.prediction(threshold), np.asarray(case.tumour, bool) & scores.mask)
