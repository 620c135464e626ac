"""What a viewer shows of scored cases, computed here so the app and the HTML report only draw it: one colour
scale for several models, another run's maps on the primary run's slices, per-slice numbers at a threshold,
the viewer's grid of a working case (where each drawn pixel lies in the source file), where it opens, and the
threshold control's range and starting value.

The viewer applies thresholds in the browser, to the float32 maps it receives: ``maps >= float32(threshold)``
inside the eroded brain, the recipe's small 3-D components removed, as ``VolumeScores.prediction`` does here;
tests/test_browser.py checks the two agree voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from uad.data.display import display_to_source, start_position
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


# -- the viewer's grid of a working case ----------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkingGrid:
    """A working case's kept slices on the viewer's axial axis: each kept slice at its own place, so gaps between
    kept slices stay empty and the coronal and sagittal views keep their proportions."""

    z_of: np.ndarray  # viewer Z of each kept slice
    slice_labels: list  # per viewer Z: the slice's index in the source file, None between kept slices
    spacing: tuple[float, float, float]  # mm along (Z, rows, columns)
    to_voxel: np.ndarray  # 4×4: (z, row, col, 1) → (i, j, k, 1) in the source file (fractional: working pixels are resampled)
    affine: np.ndarray  # the source file's affine: voxel index → scanner position (mm, RAS)

    @property
    def n(self) -> int:
        return len(self.slice_labels)

    def place(self, stack: np.ndarray) -> np.ndarray:
        """(S, H, W) per kept slice → (n, H, W) on the grid, zero between kept slices."""
        out = np.zeros((self.n, *stack.shape[1:]), stack.dtype)
        out[self.z_of] = stack
        return out

    def per_slice(self, values) -> list[float | None]:
        """Values of the kept slices per viewer Z (None where no slice was kept; NaN → None)."""
        out: list[float | None] = [None] * self.n
        for z, v in zip(self.z_of, np.asarray(values, float)):
            out[int(z)] = float(v) if np.isfinite(v) else None
        return out


def working_grid(case: WorkingCase) -> WorkingGrid:
    geo = case.geometry
    kept = np.asarray(geo.kept)
    z_of = kept - kept[0]
    labels: list = [None] * (int(z_of[-1]) + 1)
    for z, src in zip(z_of, case.slice_index):
        labels[int(z)] = int(src)
    # (z, row, col) → the display stack before the crop and resize (pixel centres: cv2.resize's convention) → source
    f = geo.side / geo.image_size
    to_display = np.array([[1, 0, 0, kept[0]], [0, f, 0, geo.top + 0.5 * f - 0.5], [0, 0, f, geo.left + 0.5 * f - 0.5],
                           [0, 0, 0, 1]], float)
    row_mm, col_mm = geo.working_pixel_mm
    return WorkingGrid(z_of, labels, (geo.spacing[2], row_mm, col_mm),
                       display_to_source(geo.source_shape, geo.ornt, geo.canonical_shape) @ to_display,
                       np.asarray(geo.affine, float))


def start(case: WorkingCase, scores: VolumeScores, grid: WorkingGrid) -> list[int]:
    """Where Explore's viewer opens (grid coordinates): the kept slice with the most tumour (source voxels) at
    its tumour's median; for a case without tumour, the slice with the highest slice score at its brain's median."""
    if case.labelled and np.asarray(case.tumour_pixels).any():
        k, mask = int(np.argmax(case.tumour_pixels)), np.asarray(case.tumour, bool)
        if not mask[k].any():
            mask = scores.mask
    else:
        k, mask = int(np.argmax(scores.scores)), scores.mask
    z, y, x = start_position(mask.shape, mask, k)
    return [int(grid.z_of[z]), y, x]


def threshold_range(scores: VolumeScores, presets: Sequence[tuple[float, float]]) -> float:
    """The top of the pixel-threshold control: above this case's largest map value, 1.5× its colour scale and
    every preset, rounded to three significant digits."""
    hi = max([colour_max([scores]) * 1.5, float(scores.maps.max())] + [t * 1.2 for _, t in presets] + [1e-3])
    return float(f"{hi * 1.01:.3g}")


def default_threshold(scores: VolumeScores, presets: Sequence[tuple[float, float]], top: float) -> float:
    """Where the threshold starts: the 5 % healthy-FPR preset, else half the map's colour scale."""
    near5 = [t for r, t in presets if abs(r - 0.05) < 1e-9]
    return float(np.clip(near5[0] if near5 else colour_max([scores]) * 0.5, 0.0, top))
