"""Post-processing of raw anomaly maps: brain-mask erosion, median filtering, slice scores, thresholding."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage as ndi

from uad.core.errors import ConfigError
from uad.scoring.recipe import PostprocessConfig


def eroded_mask(brain: np.ndarray, pixels: int) -> np.ndarray:
    """Erode each slice's brain mask in-plane by ``pixels``."""
    if pixels <= 0:
        return brain.astype(bool)
    structure = np.zeros((1, 3, 3), bool)
    structure[0] = ndi.generate_binary_structure(2, 1)
    return ndi.binary_erosion(brain, structure=structure, iterations=pixels)


def postprocess(raw: np.ndarray, brain: np.ndarray, config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps (S, H, W) → (maps × eroded brain, median filtered; the eroded mask)."""
    mask = eroded_mask(brain, config.erode_brain)
    maps = np.where(mask, raw, 0.0).astype(np.float32)
    k = config.median_size
    if k > 1:
        if not config.median_3d and k in (3, 5):
            import cv2  # ~20× faster than scipy for 3×3 / 5×5 on float32

            maps = np.stack([cv2.medianBlur(m, k) for m in maps]) if len(maps) else maps
        elif config.median_3d:
            maps = median_3d(maps, mask, k)
        else:
            maps = ndi.median_filter(maps, size=(1, k, k), mode="constant")
        maps *= mask
    return maps, mask


MEDIAN_CHUNK = 1 << 16  # voxels whose windows are gathered at once (k = 5: 32 MB of float32)


def median_3d(maps: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """``scipy.ndimage.median_filter(maps, size=(k, k, k), mode="constant")`` at the voxels of ``mask`` (0 elsewhere),
    equal to it value for value, ~10× faster (tests/test_recipe.py holds them equal).

    Only the mask's voxels are computed (the maps are 0 outside it and zeroed there again after). A voxel
    whose window holds fewer than half negatives and at least half zeros or negatives has median 0; that is
    known from two window counts alone, and with the positive residual about half the brain is such a
    voxel. The rest gather their k³ window and select its middle value with ``np.partition`` (numpy's
    SIMD selection; measured here 5× faster than ``torch.median`` and ``torch.kthvalue``, whose windows
    also gathered 4× slower than numpy's).
    """
    if k % 2 == 0:
        raise ValueError(f"median size must be odd, got {k}")
    maps = np.asarray(maps, np.float32)
    mask = np.asarray(mask, bool)
    out = np.zeros_like(maps)
    rank = k**3 // 2  # the middle of the sorted window (0-based), scipy's rank for an odd size
    below = _window_counts(maps < 0, k, outside=0) if (maps < 0).any() else 0
    zeros = _window_counts(maps == 0, k, outside=1)  # mode="constant": beyond the volume counts as 0
    select = mask & ~((below <= rank) & (rank < below + zeros))
    s, h, w = np.nonzero(select)
    windows = sliding_window_view(np.pad(maps, k // 2), (k, k, k))  # windows[s, h, w] is the window around (s, h, w)
    for i in range(0, len(s), MEDIAN_CHUNK):
        j = slice(i, i + MEDIAN_CHUNK)
        values = windows[s[j], h[j], w[j]].reshape(-1, k**3)
        out[s[j], h[j], w[j]] = np.partition(values, rank, axis=1)[:, rank]
    return out


def _window_counts(flags: np.ndarray, k: int, outside: int) -> np.ndarray:
    """How many voxels of each k×k×k window are flagged; voxels beyond the volume count as ``outside`` (0 or 1)."""
    counts = flags.astype(np.int32)
    ones = np.ones(k)
    for axis in range(3):
        # Along the later axes a voxel beyond the volume stands for a whole k- or k²-voxel row already summed.
        counts = ndi.correlate1d(counts, ones, axis=axis, mode="constant", cval=outside * k**axis)
    return counts


def slice_scores(maps: np.ndarray, mask: np.ndarray, config: PostprocessConfig, own_scores: np.ndarray | None = None) -> np.ndarray:
    if config.slice_score == "model":
        if own_scores is None:
            raise ConfigError("slice_score='model' needs a scorer with its own slice score")
        return np.asarray(own_scores, np.float32)
    out = np.zeros(len(maps), np.float32)
    for i, (m, b) in enumerate(zip(maps, mask)):
        if b.any():
            out[i] = np.percentile(m[b], config.score_percentile)
    return out


def threshold_maps(maps: np.ndarray, threshold: float, min_component: int = 0) -> np.ndarray:
    """Binary prediction ``maps >= threshold``; components smaller than ``min_component`` voxels removed (3-D,
    6-connected).

    The threshold is compared in the maps' own precision (float32), whatever type it comes as: a Python float and
    a numpy float64 would otherwise give different answers for a voxel equal to the float32 rounding of the
    threshold, and the app's viewer repeats this comparison in the browser (``Math.fround``)."""
    pred = maps >= np.asarray(threshold, maps.dtype)
    if min_component > 1 and pred.any():
        labels, n = ndi.label(pred)
        sizes = np.bincount(labels.ravel())
        small = sizes < min_component
        small[0] = False
        pred[small[labels]] = False
    return pred

