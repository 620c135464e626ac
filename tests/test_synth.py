"""Synthetic BraTS cohort: determinism, file layout, tumour plan and contrast, atomic writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from uad.core.errors import DataError
from uad.core.fileio import read_json
from uad.data import synth

FILES = ("flair", "t1", "t1ce", "t2", "seg")


# With this seed, case 0 is tumour-free and case 1 holds a high-grade (enhancing) tumour, so a two-case
# cohort covers both kinds. A change to the generator's random draws may need another seed here.
SEED = 23
TUMOUR_INDEX = 1


def _load(case_dir, name):
    return nib.load(case_dir / f"{case_dir.name}_{name}.nii.gz")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two cases written by two worker processes."""
    out = tmp_path_factory.mktemp("cohort") / "demo"  # missing: built beside, renamed into place
    return out, synth.generate_cohort(out, n_cases=2, seed=SEED, workers=2, progress=False)


@pytest.fixture(scope="module")
def tumour_case():
    return synth.generate_case(synth.case_name(TUMOUR_INDEX), SEED)


def test_default_cohort_plan_has_both_kinds():
    plans = [synth.case_plan(i, 0) for i in range(synth.DEFAULT_CASES)]
    assert set(plans) <= {0, 1, 2}
    tumour_free = plans.count(0)
    assert 1 <= tumour_free < synth.DEFAULT_CASES / 2
    assert 0.1 <= tumour_free / len(plans) <= 0.25
    assert 2 in plans


def test_seed_gives_both_kinds():
    assert synth.case_plan(0, SEED) == 0 and synth.case_plan(TUMOUR_INDEX, SEED) > 0


def test_layout(cohort):
    out, case_dirs = cohort
    assert [d.name for d in case_dirs] == ["BraTS2021_00000", "BraTS2021_00001"]
    # Only the case folders, cohort.json and synth's marker: no temporary folders left behind.
    assert sorted(p.name for p in out.iterdir()) == [synth.MARKER, "BraTS2021_00000", "BraTS2021_00001", "cohort.json"]
    assert [p.name for p in out.parent.iterdir()] == ["demo"]
    assert read_json(out / "cohort.json") == {
        "n_cases": 2,
        "seed": SEED,
        "generator_version": synth.GENERATOR_VERSION,
    }
    for case_dir in case_dirs:
        expected = sorted(f"{case_dir.name}_{f}.nii.gz" for f in FILES)
        assert sorted(p.name for p in case_dir.iterdir()) == expected
        images = {name: _load(case_dir, name) for name in FILES}
        arrays = {name: np.asarray(img.dataobj) for name, img in images.items()}
        for name, img in images.items():
            assert img.shape == synth.GRID_SHAPE
            np.testing.assert_array_equal(img.affine, synth.BRATS_AFFINE)
            assert arrays[name].dtype == (np.uint8 if name == "seg" else np.int16)
        assert nib.aff2axcodes(images["flair"].affine) == ("L", "P", "S")
        brain = arrays["flair"] > 0
        assert 1.0e6 < brain.sum() < 2.0e6  # an adult brain in 1 mm voxels
        for name in synth.MODALITIES:
            assert arrays[name].min() >= 0
            np.testing.assert_array_equal(arrays[name] > 0, brain)  # background exactly 0, brain positive
        seg = arrays["seg"]
        assert set(np.unique(seg)) <= set(synth.SEG_LABELS)
        assert not (seg[~brain] > 0).any()
        has_tumour = synth.case_plan(int(case_dir.name[-5:]), SEED) > 0
        assert (seg > 0).any() == has_tumour


def test_canonical_orientation_is_upright(cohort):
    """After reorientation to RAS the brain is centred left-right and sits low in the axial stack."""
    _, case_dirs = cohort
    canonical = nib.as_closest_canonical(_load(case_dirs[0], "t1"))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    brain = np.asarray(canonical.dataobj) > 0
    x, _, z = (np.flatnonzero(brain.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    assert abs((x[0] + x[-1]) / 2 - 119.5) < 12
    assert z[0] <= 10 and 120 <= z[-1] < 155
    # The cerebrum is wider than the brainstem: the widest axial slice is in the upper half.
    widths = brain.sum(axis=(0, 1))
    assert np.argmax(widths) > z[0] + (z[-1] - z[0]) / 3


def test_deterministic_and_worker_independent(cohort, tumour_case):
    _, case_dirs = cohort
    written = case_dirs[TUMOUR_INDEX]
    for name in FILES:  # written by a worker process, regenerated here: bit-identical
        np.testing.assert_array_equal(np.asarray(_load(written, name).dataobj), tumour_case[name])
    other = synth.generate_case(synth.case_name(TUMOUR_INDEX), SEED + 1)
    assert not np.array_equal(other["flair"], tumour_case["flair"])


def test_tumour_contrast(tumour_case):
    """Glioma contrasts: oedema bright in FLAIR and T2, tumour dark in T1, enhancing rim bright in T1ce."""
    seg = tumour_case["seg"]
    normal = (tumour_case["flair"] > 0) & (seg == 0)
    tumour, oedema, enhancing = seg > 0, seg == 2, seg == 4
    assert oedema.sum() > 100

    def median(name, region):
        return float(np.median(tumour_case[name][region]))

    assert median("flair", oedema) > 1.3 * median("flair", normal)
    assert median("t2", oedema) > 1.15 * median("t2", normal)  # normal T2 includes bright CSF
    # Normal brain's upper quartile in T1 is white matter, where gliomas mostly grow.
    assert median("t1", tumour) < np.percentile(tumour_case["t1"][normal], 75)
    assert enhancing.any()
    assert median("t1ce", enhancing) > 1.3 * median("t1ce", normal)


def test_rerun_keeps_complete_cases(cohort):
    out, case_dirs = cohort
    before = {p: p.stat().st_mtime_ns for d in case_dirs for p in d.iterdir()}
    notes = out / "notes.txt"  # a user's file in synth's own cohort is left alone too
    notes.write_text("mine")
    try:
        assert synth.generate_cohort(out, n_cases=2, seed=SEED, workers=1, progress=False) == case_dirs
        assert notes.read_text() == "mine"
    finally:
        notes.unlink()
    assert {p: p.stat().st_mtime_ns for d in case_dirs for p in d.iterdir()} == before


@pytest.fixture
def fast_build(monkeypatch):
    """Blank cases instead of generated ones (in-process only: use workers=1)."""
    built = []

    def build(out_dir, case_id, seed):
        built.append(case_id)
        return synth.write_case(out_dir, case_id, _blank_case(), descrip=synth._tag(seed))

    monkeypatch.setattr(synth, "_build_case", build)
    return built


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_synth_refuses_a_folder_it_did_not_write(tmp_path, capsys, fast_build):
    from conftest import phantom
    from conftest import write_case as write_real_case

    from uad import cli

    out = tmp_path / "brats"
    write_real_case(out, "BraTS2021_00000", *phantom(shape=(8, 8, 4)))
    (out / "my-notes.txt").write_text("do not delete")
    before = _snapshot(out)
    assert cli.main(["synth", "--out", str(out), "--cases", "1", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not written by `uad synth`" in err and err.count("\n") == 1
    assert _snapshot(out) == before and fast_build == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats"]  # nothing written beside it either
    (out / "my-notes.txt").unlink()  # a single foreign case folder is refused just the same
    with pytest.raises(DataError, match="not written by"):
        synth.generate_cohort(out, n_cases=1, workers=1, progress=False)
    with pytest.raises(DataError, match="is not a folder"):
        synth.generate_cohort(out / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz", n_cases=1, progress=False)


def test_synth_never_replaces_a_foreign_case_in_its_own_cohort(tmp_path, fast_build):
    from conftest import phantom
    from conftest import write_case as write_real_case

    out = tmp_path / "demo"
    synth.generate_cohort(out, n_cases=1, workers=1, progress=False)
    real = write_real_case(out, "BraTS2021_00001", *phantom(shape=(8, 8, 4)))
    before = _snapshot(real)
    with pytest.raises(DataError, match="BraTS2021_00001: exists and was not written by"):
        synth.generate_cohort(out, n_cases=2, workers=1, progress=False)
    assert _snapshot(real) == before and fast_build == ["BraTS2021_00000"]


def test_synth_fills_an_empty_folder_and_updates_its_own(tmp_path, fast_build):
    out = tmp_path / "empty"
    out.mkdir()
    synth.generate_cohort(out, n_cases=1, seed=1, workers=1, progress=False)
    assert (out / synth.MARKER).is_file() and (out / "BraTS2021_00000").is_dir()
    # Another seed replaces synth's own case (and only it).
    synth.generate_cohort(out, n_cases=1, seed=2, workers=1, progress=False)
    assert fast_build == ["BraTS2021_00000", "BraTS2021_00000"]
    assert read_json(out / "cohort.json")["seed"] == 2


def test_failed_new_cohort_leaves_nothing(tmp_path, monkeypatch):
    progress = []

    def failing_build(out_dir, case_id, seed):
        progress.append(synth.cases_written(tmp_path / "demo"))  # what the app's progress bar reads
        if case_id == "BraTS2021_00001":
            raise OSError("disk full")
        synth.write_case(out_dir, case_id, _blank_case(), descrip=synth._tag(seed))

    monkeypatch.setattr(synth, "_build_case", failing_build)
    with pytest.raises(OSError, match="disk full"):
        synth.generate_cohort(tmp_path / "demo", n_cases=2, workers=1, progress=False)
    assert progress == [0, 1]
    assert list(tmp_path.iterdir()) == []


def _blank_case() -> dict[str, np.ndarray]:
    arrays = {name: np.zeros(synth.GRID_SHAPE, dtype=np.int16) for name in synth.MODALITIES}
    arrays["seg"] = np.zeros(synth.GRID_SHAPE, dtype=np.uint8)
    return arrays


def test_failed_write_leaves_no_partial_case(tmp_path, monkeypatch):
    real_save = synth._save_nifti
    calls = []

    def failing_save(path, array, descrip):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(path, array, descrip)

    monkeypatch.setattr(synth, "_save_nifti", failing_save)
    with pytest.raises(OSError, match="disk full"):
        synth.write_case(tmp_path, "BraTS2021_00007", _blank_case())
    assert len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if "BraTS2021_00007" in p.name]


def test_write_case_replaces_existing_folder(tmp_path):
    first = synth.write_case(tmp_path, "BraTS2021_00003", _blank_case())
    (first / "stale.txt").write_text("old")
    second = synth.write_case(tmp_path, "BraTS2021_00003", _blank_case())
    assert second == first
    assert sorted(p.name for p in second.iterdir()) == sorted(f"BraTS2021_00003_{f}.nii.gz" for f in FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["BraTS2021_00003"]


def test_missing_template_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_template_dir", lambda: tmp_path)
    synth._template.cache_clear()
    try:
        with pytest.raises(DataError, match="MNI152"):
            synth.generate_cohort(tmp_path / "out", n_cases=1, progress=False)
        with pytest.raises(DataError, match="MNI152"):
            synth.generate_case("BraTS2021_00000", 0)
    finally:
        synth._template.cache_clear()
