"""Paired differences: two methods on the same patients, resampled together."""

from __future__ import annotations

import numpy as np
import pytest

from uad.core.errors import ConfigError
from uad.data import PreprocessConfig, build_store
from uad.evaluation.cohort import score_cohort
from uad.evaluation.paired import CaseArrays, paired_differences
from uad.scoring.recipe import ScoringRecipe
from uad.scoring.scorers import IntensityBaseline


class NoisyIntensity:
    """The intensity baseline with a bright false alarm planted in healthy tissue of every slice (the tumour sits
    in the other half of these phantoms): a worse map on every patient, deterministically."""

    name = "noisy"

    def model_residual(self):
        return None

    def raw(self, images, brain, brain_pixels, residual=None, channels=None):
        maps = np.asarray(images[:, 0], np.float32).copy()
        h, w = maps.shape[1:]
        maps[:, h // 2 - 6:h // 2 + 6, w // 4 - 6:w // 4 + 6] += 0.8
        maps *= np.asarray(brain, np.float32)
        return maps, maps.reshape(len(maps), -1).mean(axis=1), None


class Renamed(IntensityBaseline):
    name = "intensity_again"


@pytest.fixture(scope="module")
def cohort_store(tmp_path_factory):
    from conftest import phantom, write_case

    root = tmp_path_factory.mktemp("paired")
    for i in range(8):
        vols, seg = phantom(seed=i, tumour=True)
        write_case(root, f"BraTS2021_{i:05d}", vols, seg)
    mp = pytest.MonkeyPatch()
    mp.setenv("UAD_HOME", str(tmp_path_factory.mktemp("home")))
    store = build_store(root, PreprocessConfig(image_size=64), progress=False)
    mp.undo()
    return store


def _arrays(store, scorers):
    ids = store.labelled_ids
    tallies, _ = score_cohort(store, scorers, ids[2:], ids[:2], ScoringRecipe())
    return {name: CaseArrays.from_tally(t) for name, t in tallies.items()}


def test_identical_maps_differ_by_exactly_zero(cohort_store):
    arrays = _arrays(cohort_store, [IntensityBaseline(), Renamed()])
    for d in paired_differences(arrays["intensity"], arrays["intensity_again"], n_boot=200):
        assert d.diff == 0.0 and d.low == 0.0 and d.high == 0.0, d
        assert not d.excludes_zero and d.verdict == "no clear difference"


def test_a_method_better_on_every_patient_gets_an_interval_above_zero(cohort_store):
    arrays = _arrays(cohort_store, [IntensityBaseline(), NoisyIntensity()])
    diffs = {d.metric: d for d in paired_differences(arrays["intensity"], arrays["noisy"], n_boot=200)}
    for metric in ("pixel_ap", "dice_at_5pct_fpr"):  # (slice AUROC saturates at 1 on these bright phantoms)
        d = diffs[metric]
        assert d.a > d.b and d.low > 0, d  # intensity beats its noisy copy, and the paired interval says so
        assert d.excludes_zero and d.verdict == "A better"
    # the same pair in the other order: the interval is below zero
    back = {d.metric: d for d in paired_differences(arrays["noisy"], arrays["intensity"], n_boot=200)}
    assert back["pixel_ap"].high < 0 and back["pixel_ap"].diff == pytest.approx(-diffs["pixel_ap"].diff)


def test_different_patients_are_refused(cohort_store):
    ids = cohort_store.labelled_ids
    t1, _ = score_cohort(cohort_store, [IntensityBaseline()], ids[2:6], ids[:2], ScoringRecipe())
    t2, _ = score_cohort(cohort_store, [IntensityBaseline()], ids[3:7], ids[:2], ScoringRecipe())
    with pytest.raises(ConfigError, match="same patients"):
        paired_differences(CaseArrays.from_tally(t1["intensity"]), CaseArrays.from_tally(t2["intensity"]), n_boot=10)
