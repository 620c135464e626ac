"""Post-processing of anomaly maps: the fast 3-D median is scipy's, value for value."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from uad.scoring.postprocess import _window_counts, eroded_mask, median_3d, postprocess
from uad.scoring.recipe import PostprocessConfig


def _maps(shape, seed, negatives=True):
    """Residual-like maps: exact zeros (as the positive residual leaves), ties, and optionally negatives."""
    rng = np.random.default_rng(seed)
    maps = np.round(rng.random(shape, dtype=np.float32) - (0.3 if negatives else 0.0), 2)
    maps[rng.random(shape) < 0.4] = 0
    mask = rng.random(shape) < 0.7
    return np.where(mask, maps, 0).astype(np.float32), mask


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("negatives", [True, False])
def test_3d_median_equals_scipys_constant_mode_median_at_every_masked_voxel(k, negatives):
    for shape in [(9, 20, 24), (2, 11, 13), (1, 5, 5)]:  # fewer slices than the window too
        maps, mask = _maps(shape, seed=k, negatives=negatives)
        ref = ndi.median_filter(maps, size=(k, k, k), mode="constant")
        out = median_3d(maps, mask, k)
        assert out.dtype == np.float32 and out.shape == maps.shape
        assert np.array_equal(out[mask], ref[mask]), (k, shape)
        assert not out[~mask].any()


@pytest.mark.parametrize("outside", [0, 1])
def test_window_counts_count_every_voxel_of_each_window_including_those_beyond_the_volume(outside):
    """The counts that let the median skip windows that are mostly zeros (too few would only slow it down,
    so this is what keeps it fast)."""
    flags = np.random.default_rng(1).random((6, 9, 10)) < 0.5
    ref = ndi.convolve(flags.astype(np.int32), np.ones((5, 5, 5), np.int32), mode="constant", cval=outside)
    assert np.array_equal(_window_counts(flags, 5, outside), ref)


def test_3d_median_of_an_empty_or_all_zero_map_is_zero():
    maps = np.zeros((4, 8, 8), np.float32)
    assert not median_3d(maps, np.ones_like(maps, bool), 5).any()
    assert not median_3d(np.ones_like(maps), np.zeros_like(maps, bool), 5).any()


def test_postprocess_with_the_3d_median_is_the_scipy_recipe():
    """The recipe's 3-D median step: maps × eroded brain, scipy's k³ median in constant mode, × mask."""
    rng = np.random.default_rng(0)
    brain = np.zeros((12, 32, 32), bool)
    brain[:, 4:28, 6:26] = True
    raw = rng.random(brain.shape, dtype=np.float32) * (rng.random(brain.shape) < 0.6)
    config = PostprocessConfig(median_3d=True, median_size=5, erode_brain=2)
    maps, mask = postprocess(raw, brain, config)
    expected_mask = eroded_mask(brain, 2)
    expected = ndi.median_filter(np.where(expected_mask, raw, 0).astype(np.float32), size=(5, 5, 5), mode="constant")
    assert np.array_equal(mask, expected_mask) and np.array_equal(maps, expected * expected_mask)
