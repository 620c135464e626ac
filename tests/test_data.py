"""Data layer: discovery, loading/validation, preprocessing, slice store, splits."""

from __future__ import annotations

import gzip
import os
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import BRATS_AFFINE, NAMES_2023, REAL_CASE, phantom, write_case

from uad.core.errors import ConfigError, DataError
from uad.data import (
    PreprocessConfig,
    SliceStore,
    build_store,
    discover_cases,
    load_case,
    preprocess_case,
    split_cases,
)
from uad.data import store as store_mod
from uad.data.dataset import SliceDataset
from uad.data.preprocess import SLICE_TABLE_COLUMNS, WorkingCase

SMALL = PreprocessConfig(image_size=64)


# -- discovery --------------------------------------------------------------------------------------------
def test_discovers_both_naming_schemes_nesting_and_extensions(tmp_path):
    vols, seg = phantom()
    write_case(tmp_path, "BraTS2021_00001", vols, seg)
    write_case(tmp_path / "group", "BraTS-GLI-00002-000", vols, seg, names=NAMES_2023, sep="-", ext=".nii")
    write_case(tmp_path, "unlabelled", {"flair": vols["flair"]}, None)
    cases, skipped = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["BraTS-GLI-00002-000", "BraTS2021_00001", "unlabelled"]
    assert skipped == []
    c2023 = cases[0]
    assert set(c2023.modalities) == {"flair", "t1", "t1ce", "t2"}
    assert c2023.modalities["flair"].name == "BraTS-GLI-00002-000-t2f.nii"
    assert c2023.modalities["t1ce"].name == "BraTS-GLI-00002-000-t1c.nii"
    assert cases[1].modalities["t1ce"].name.endswith("_t1ce.nii.gz")
    assert cases[1].labelled and not cases[2].labelled


def test_ambiguous_case_is_skipped_with_reason(tmp_path):
    vols, seg = phantom()
    folder = write_case(tmp_path, "A", vols, seg)
    shutil.copy(folder / "A_flair.nii.gz", folder / "A_flair.nii")
    cases, skipped = discover_cases(tmp_path)
    assert cases == [] and skipped[0].case_id == "A" and "two files for flair" in skipped[0].reason


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover_cases(tmp_path / "nope")


# -- loading and validation -------------------------------------------------------------------------------
def _one_case(tmp_path, **kw):
    vols, seg = phantom()
    write_case(tmp_path, "C", vols, seg, **kw)
    return discover_cases(tmp_path)[0][0]


def _overwrite(path, data, affine=BRATS_AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_missing_modality_names_case_and_modality(tmp_path):
    vols, seg = phantom()
    write_case(tmp_path, "C", {"flair": vols["flair"]}, seg)
    case = discover_cases(tmp_path)[0][0]
    with pytest.raises(DataError, match=r"C: missing modality t2"):
        load_case(case, ("flair", "t2"))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p.write_bytes(b"this is not a nifti file"), "not a readable NIfTI"),
        (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:60_000])), "truncated or corrupt"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated or corrupt|not a readable"),
        (lambda p: _overwrite(p, np.zeros((48, 48, 24, 2), np.int16)), "expected a 3-D volume"),
        (lambda p: _overwrite(p, np.ones((40, 48, 24), np.int16)), r"shape \(40, 48, 24\) differs"),
        (lambda p: _overwrite(p, phantom()[0]["flair"], affine=np.diag([2.0, 2, 2, 1])), "affine differs"),
    ],
    ids=["garbage", "truncated-gzip-stream", "half-file", "4d", "shape", "affine"],
)
def test_bad_image_files_raise_naming_file_and_reason(tmp_path, corrupt, message):
    case = _one_case(tmp_path)
    corrupt(case.modalities["t1"])
    with pytest.raises(DataError, match=message) as err:
        load_case(case, ("flair", "t1"))
    assert "C_t1.nii.gz" in str(err.value)


def test_non_finite_values_are_refused(tmp_path):
    case = _one_case(tmp_path)
    data = phantom()[0]["flair"].astype(np.float32)
    data[10, 10, 10] = np.nan
    _overwrite(case.modalities["flair"], data)
    with pytest.raises(DataError, match="non-finite") as err:
        load_case(case, ("flair",))
    assert "C_flair" in str(err.value)


def test_empty_brain_is_refused(tmp_path):
    case = _one_case(tmp_path)
    _overwrite(case.modalities["flair"], np.zeros((48, 48, 24), np.int16))
    with pytest.raises(DataError, match="empty brain"):
        load_case(case, ("flair",))


@pytest.mark.parametrize("value, message", [(-1.0, "negative labels"), (1.5, "non-integer labels")])
def test_bad_segmentation_labels_are_refused(tmp_path, value, message):
    case = _one_case(tmp_path)
    seg = phantom()[1].astype(np.float32)
    seg[5, 5, 5] = value
    _overwrite(case.seg, seg)
    with pytest.raises(DataError, match=message) as err:
        load_case(case, ("flair",))
    assert "C_seg" in str(err.value)


def test_whole_tumour_is_any_positive_label_in_every_convention(tmp_path):
    vols, seg = phantom()
    for labels in ([1, 2, 4], [1, 2, 3], [1, 2, 3, 4]):
        relabelled = np.zeros_like(seg)
        for new, old in zip(labels, [1, 2, 4, 4]):
            relabelled[seg == old] = new
        write_case(tmp_path / str(labels), "C", vols, relabelled)
        loaded = load_case(discover_cases(tmp_path / str(labels))[0][0], ("flair",))
        assert np.array_equal(loaded.tumour, nib.as_closest_canonical(nib.Nifti1Image(seg, BRATS_AFFINE)).get_fdata() > 0)


def test_orientation_is_canonical_whatever_the_storage_order(tmp_path):
    """The same anatomy stored LPS (BraTS) and RAS gives identical slices."""
    vols, seg = phantom()
    write_case(tmp_path / "lps", "C", vols, seg, affine=BRATS_AFFINE)
    ras_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    ras_affine[:3, 3] = BRATS_AFFINE[:3, 3] - [47, 47, 0]  # same world position of voxel (0,0,0) after flips
    flipped = {m: v[::-1, ::-1, :].copy() for m, v in vols.items()}
    write_case(tmp_path / "ras", "C", flipped, seg[::-1, ::-1, :].copy(), affine=ras_affine)
    a = preprocess_case(discover_cases(tmp_path / "lps")[0][0], SMALL)
    b = preprocess_case(discover_cases(tmp_path / "ras")[0][0], SMALL)
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    assert np.array_equal(a.tumour, b.tumour)
    assert np.array_equal(a.slice_index, b.slice_index)


@pytest.mark.parametrize("dtype,slope,inter", [(np.int16, None, None), (np.uint8, 1.0, 0.0), (np.int16, 2.0, 0.5),
                                                (np.int32, None, None), (np.float32, None, None)])
def test_voxels_are_the_files_values_reoriented_whatever_the_storage_type(tmp_path, dtype, slope, inter):
    """Small unscaled integers take a faster path (reoriented before the float cast): every stored type and
    scaling must still give exactly nibabel's float32 values, in RAS+ order."""
    from nibabel import orientations

    from uad.data import volumes

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 200, (9, 8, 7)).astype(dtype)
    for affine in (BRATS_AFFINE, np.diag([1.0, -1.0, 1.0, 1.0])):
        img = nib.Nifti1Image(stored, affine)
        img.header.set_data_dtype(dtype)
        if slope is not None:
            img.header.set_slope_inter(slope, inter)
        path = tmp_path / f"{np.dtype(dtype).name}-{slope}.nii.gz"
        nib.save(img, path)
        data, _, ornt, _ = volumes._read(path)
        loaded = nib.load(path)
        expected = orientations.apply_orientation(np.asarray(loaded.dataobj, dtype=np.float32), ornt)
        assert data.dtype == np.float32 and data.flags.c_contiguous
        assert np.array_equal(data, expected)
        assert np.array_equal(data, orientations.apply_orientation(loaded.get_fdata(), ornt).astype(np.float32))


# -- preprocessing ----------------------------------------------------------------------------------------
def test_normalisation_is_per_volume_not_per_slice(tmp_path):
    vols, seg = phantom(tumour=False)
    flair = vols["flair"].astype(np.float32)
    flair[:, :, 12:] *= 0.5  # upper half of the volume is darker
    write_case(tmp_path, "C", {"flair": flair.astype(np.int16)}, seg)
    pre = preprocess_case(discover_cases(tmp_path)[0][0], SMALL)
    idx = list(pre.slice_index)
    lower, upper = idx.index(8), idx.index(16)
    mean = lambda s: pre.images[s, 0][pre.brain[s]].mean()  # noqa: E731
    # Per-slice min-max would make both slices look alike; per-volume keeps the darker half darker.
    assert mean(upper) < 0.6 * mean(lower)
    assert 0.0 <= pre.images.min() and pre.images.max() <= 1.0
    assert pre.images[:, 0][~pre.brain].max() == 0.0


def test_slice_labels_counts_and_masks(tmp_path):
    vols, seg = phantom()
    write_case(tmp_path, "C", vols, seg)
    pre = preprocess_case(discover_cases(tmp_path)[0][0], SMALL)
    brain3d = vols["flair"] != 0
    for i, k in enumerate(pre.slice_index):
        assert pre.tumour_pixels[i] == (seg[:, :, k] > 0).sum()
        assert pre.brain_pixels[i] == brain3d[:, :, k].sum()
        assert pre.label[i] == (seg[:, :, k] > 0).any()
    assert pre.label.any() and not pre.label.all()
    assert pre.tumour[pre.label].any(axis=(1, 2)).mean() > 0.8  # tumour masks at working size follow the labels
    assert not pre.tumour[~pre.label].any()
    assert pre.images.shape == (len(pre.slice_index), 1, 64, 64)
    # slices with too little brain are dropped
    areas = brain3d.sum(axis=(0, 1))
    assert set(pre.slice_index) == set(np.flatnonzero(areas >= 0.1 * areas.max()))


def test_maps_return_to_the_source_grid(tmp_path):
    vols, seg = phantom()
    write_case(tmp_path, "C", vols, seg)
    pre = preprocess_case(discover_cases(tmp_path)[0][0], SMALL)
    back = pre.geometry.to_source(pre.tumour.astype(np.float32)) > 0.5
    assert back.shape == seg.shape
    dice = 2 * (back & (seg > 0)).sum() / (back.sum() + (seg > 0).sum())
    assert dice > 0.85


def test_config_is_validated():
    with pytest.raises(ConfigError, match="image size"):
        PreprocessConfig(image_size=100)
    with pytest.raises(ConfigError, match="unknown modality"):
        PreprocessConfig(modalities=("pd",))


# -- slice store ------------------------------------------------------------------------------------------
def test_store_roundtrip_dataset_and_skip_report(make_cohort, tmp_path):
    root = make_cohort(4)
    bad = write_case(root, "broken", phantom()[0], phantom()[1])
    (bad / "broken_flair.nii.gz").write_bytes(b"garbage")
    store = build_store(root, SMALL, workers=1, progress=False)
    assert store.case_ids == [f"BraTS2021_{i:05d}" for i in range(4)]
    assert [s.case_id for s in store.skipped] == ["broken"] and "not a readable NIfTI" in store.skipped[0].reason
    case = store.case("BraTS2021_00000")
    assert case.images.dtype == np.float16 and isinstance(case.images, np.memmap)
    direct = preprocess_case(discover_cases(root)[0][0], SMALL)
    np.testing.assert_allclose(case.images, direct.images, atol=1e-3)
    assert list(case.table.slice_index) == list(direct.slice_index)

    healthy = SliceDataset(store, store.case_ids, healthy_only=True)
    everything = SliceDataset(store, store.case_ids)
    assert len(healthy) == (~store.table.label).sum() < len(everything) == len(store.table)
    x = healthy[0]
    assert x.dtype.is_floating_point and tuple(x.shape) == (1, 64, 64)


def test_store_and_fresh_preprocessing_give_the_same_working_case(make_cohort):
    root = make_cohort(1)
    cached = build_store(root, SMALL, workers=1, progress=False).case("BraTS2021_00000")
    fresh = preprocess_case(discover_cases(root)[0][0], SMALL)
    assert type(cached) is type(fresh) is WorkingCase
    # The store keeps float16 memory-mapped; fresh preprocessing gives float32 in memory.
    assert isinstance(cached.images, np.memmap) and cached.images.dtype == np.float16
    assert fresh.images.dtype == np.float32
    np.testing.assert_array_equal(cached.images, fresh.images.astype(np.float16))
    for name in ("tumour", "brain"):
        assert getattr(cached, name).dtype == getattr(fresh, name).dtype == bool
        np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name))
    assert list(fresh.table.columns) == list(SLICE_TABLE_COLUMNS)
    pd.testing.assert_frame_equal(cached.table, fresh.table)
    np.testing.assert_array_equal(cached.brain_pixels, fresh.brain_pixels)
    assert cached.label.any() and cached.label.dtype == bool
    assert cached.geometry.to_dict() == fresh.geometry.to_dict()
    assert (cached.case_id, cached.labelled, cached.norm) == (fresh.case_id, fresh.labelled, fresh.norm)
    loaded = cached.in_memory()  # what outlives the cache entry: float32, nothing mapped
    assert type(loaded.images) is np.ndarray and loaded.images.dtype == np.float32
    assert type(loaded.tumour) is np.ndarray and type(loaded.brain) is np.ndarray
    np.testing.assert_allclose(loaded.images, fresh.images, atol=1e-3)


def test_load_working_case_reads_an_up_to_date_cache_else_preprocesses(make_cohort, monkeypatch):
    root = make_cohort(2)
    cid = "BraTS2021_00000"
    real = store_mod.preprocess_case
    fresh_calls = []
    monkeypatch.setattr(store_mod, "preprocess_case", lambda case, config: fresh_calls.append(case.case_id) or real(case, config))

    fresh = store_mod.load_working_case(root, cid, SMALL)  # no cache yet: preprocessed now, nothing written
    assert fresh_calls == [cid] and not store_mod.store_dir(root, SMALL).exists()
    build_store(root, SMALL, workers=1, progress=False)
    fresh_calls.clear()
    cached = store_mod.load_working_case(root, cid, SMALL)
    assert fresh_calls == []  # read from the cache ...
    assert type(cached.images) is np.ndarray and cached.images.dtype == np.float32  # ... into memory, as float32
    np.testing.assert_array_equal(cached.images, fresh.images.astype(np.float16).astype(np.float32))
    pd.testing.assert_frame_equal(cached.table, fresh.table)

    # The case's files change after the cache was built: the entry is stale, the case is preprocessed anew.
    write_case(root, cid, *phantom(seed=9))
    case = discover_cases(root)[0][0]
    now = store_mod.load_working_case(root, case, SMALL)
    assert fresh_calls == [cid]
    np.testing.assert_array_equal(now.images, real(case, SMALL).images)
    # A stale case never opens the store (the manifest says so); the fallback may be the caller's own (the app
    # keeps what it preprocesses: uad.scoring.cache.cached_working_case).
    opened, own, real_store = [], [], store_mod.SliceStore
    monkeypatch.setattr(store_mod, "SliceStore", lambda *a: opened.append(a) or real_store(*a))
    store_mod.load_working_case(root, case, SMALL, preprocess=lambda c, config: own.append(c.case_id) or real(c, config))
    assert own == [cid] and fresh_calls == [cid] and opened == []
    assert store_mod.load_working_case(root, "BraTS2021_00001", SMALL).case_id == "BraTS2021_00001" and len(opened) == 1
    monkeypatch.setattr(store_mod, "SliceStore", real_store)
    # A damaged entry of an unchanged case: the same fallback, no error.
    other = "BraTS2021_00001"
    images = store_mod.store_dir(root, SMALL) / "cases" / other / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    assert store_mod.load_working_case(root, other, SMALL).case_id == other and fresh_calls[-1] == other

    with pytest.raises(DataError, match="case nope is not in this folder"):
        store_mod.load_working_case(root, "nope", SMALL)
    write_case(root, "flair_only", {"flair": phantom()[0]["flair"]})
    with pytest.raises(DataError, match="missing modality t2"):  # the user's to fix: no silent fallback
        store_mod.load_working_case(root, "flair_only", PreprocessConfig(image_size=64, modalities=("flair", "t2")))


def test_store_rebuilds_only_what_changed(make_cohort, monkeypatch):
    root = make_cohort(3)
    build_store(root, SMALL, workers=1, progress=False)
    built = []
    original = store_mod._write_case
    monkeypatch.setattr(store_mod, "_write_case", lambda case, *a: built.append(case.case_id) or original(case, *a))
    build_store(root, SMALL, workers=1, progress=False)
    assert built == []
    vols, seg = phantom(seed=9)
    write_case(root, "BraTS2021_00001", vols, seg)  # new content, new mtime/size
    build_store(root, SMALL, workers=1, progress=False)
    assert built == ["BraTS2021_00001"]
    other = build_store(root, PreprocessConfig(image_size=80), workers=1, progress=False)
    assert sorted(built[1:]) == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    assert other.case("BraTS2021_00000").images.shape[-1] == 80


def test_interrupted_build_leaves_nothing_that_reads_as_valid(make_cohort, monkeypatch):
    root = make_cohort(2)
    real_save = store_mod._save_array
    calls = {"n": 0}

    def failing_save(path, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # second case, first array
            raise KeyboardInterrupt
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(store_mod, "_save_array", failing_save)
    with pytest.raises(KeyboardInterrupt):
        build_store(root, SMALL, workers=1, progress=False)
    monkeypatch.setattr(store_mod, "_save_array", real_save)
    folder = store_mod.store_dir(root, SMALL)
    with pytest.raises(DataError, match="not built"):
        SliceStore(folder)
    assert sorted(p.name for p in (folder / "cases").iterdir()) == ["BraTS2021_00000"]  # no temp folder left
    store = build_store(root, SMALL, workers=1, progress=False)
    assert store.case_ids == ["BraTS2021_00000", "BraTS2021_00001"]


def test_labelled_ids_come_from_the_metadata_without_opening_cases(make_cohort, monkeypatch):
    root = make_cohort(3)
    write_case(root, "unlabelled", {"flair": phantom(seed=5)[0]["flair"]}, None)
    store = build_store(root, SMALL, workers=1, progress=False)
    # Opening a case maps its arrays and re-hashes its files: listing labelled cases must not need that.
    monkeypatch.setattr(SliceStore, "case", lambda self, cid: pytest.fail(f"case {cid} was opened"))
    labelled = ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    assert store.labelled_ids == labelled
    from uad.evaluation.evaluate import split_for

    assert split_for(store, None, "all").eval_cases == labelled + ["unlabelled"]


def test_a_concurrent_builds_work_in_progress_is_not_removed_as_stale(make_cohort):
    root = make_cohort(2)
    entry = build_store(root, SMALL, workers=1, progress=False).root
    live = entry / "cases" / f".tmp-BraTS2021_00007-{os.getppid()}"  # a live process's case being written
    dead = entry / "cases" / ".tmp-BraTS2021_00008-999999999"
    live.mkdir()
    dead.mkdir()
    build_store(root, SMALL, workers=1, progress=False)
    assert live.exists() and not dead.exists()


def test_parallel_build_matches_serial(make_cohort, tmp_path):
    root = make_cohort(3)
    a = build_store(root, SMALL, cache_root=tmp_path / "c1", workers=1, progress=False)
    b = build_store(root, SMALL, cache_root=tmp_path / "c2", workers=2, progress=False)
    for cid in a.case_ids:
        assert np.array_equal(a.case(cid).images, b.case(cid).images)


# -- splits -----------------------------------------------------------------------------------------------
def test_splits_are_deterministic_disjoint_and_complete():
    ids = [f"case{i:03d}" for i in range(50)]
    s1 = split_cases(ids, (0.7, 0.1, 0.2), seed=3)
    s2 = split_cases(list(reversed(ids)), (0.7, 0.1, 0.2), seed=3)
    assert s1 == s2
    assert (len(s1["train"]), len(s1["val"]), len(s1["test"])) == (35, 5, 10)
    all_ids = s1["train"] + s1["val"] + s1["test"]
    assert sorted(all_ids) == ids and len(set(all_ids)) == 50
    assert split_cases(ids, (0.7, 0.1, 0.2), seed=4) != s1
    small = split_cases(ids[:4], (0.7, 0.1, 0.2))
    assert all(len(v) >= 1 for v in small.values())


def test_split_ratios_are_validated():
    from uad.data import parse_ratios

    assert parse_ratios("0.6,0.2,0.2") == (0.6, 0.2, 0.2)
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_ratios("0.7,0.1,0.1")
    with pytest.raises(ConfigError, match="three"):
        parse_ratios("0.7,0.3")


# -- the real case ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not REAL_CASE.is_dir(), reason=f"real case not present at {REAL_CASE}")
def test_real_case_end_to_end():
    cases, skipped = discover_cases(REAL_CASE)
    assert len(cases) == 1 and not skipped
    case = cases[0]
    pre = preprocess_case(case, PreprocessConfig(modalities=("flair", "t2")))
    seg = np.asarray(nib.load(str(case.seg)).dataobj)
    for i, k in enumerate(pre.slice_index):
        assert pre.label[i] == (seg[:, :, k] > 0).any()
        assert pre.tumour_pixels[i] == (seg[:, :, k] > 0).sum()
    assert pre.label.sum() > 10
    # The real file has negative interpolation values at the brain edge; they must not punch holes.
    flair = np.asarray(nib.load(str(case.modalities["flair"])).dataobj)
    assert (flair < 0).any()
    assert pre.brain_pixels.sum() >= ((flair[:, :, pre.slice_index] != 0).sum())
    # FLAIR tumour is brighter than the rest of the brain after normalisation
    img, tum, brain = pre.images[:, 0], pre.tumour, pre.brain
    assert img[tum].mean() > img[brain & ~tum].mean() + 0.1


# -- input safety: headers, voxel types, backgrounds, one bad case among good ones -------------------------
def _lying_header(path, shape, dtype=np.int16, payload=10_000):
    """A NIfTI file whose header claims ``shape`` but which holds only ``payload`` bytes of data."""
    header = nib.Nifti1Image(np.zeros((2, 2, 2), dtype), BRATS_AFFINE).header
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * payload
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


@pytest.mark.parametrize(
    "name, shape, dtype, message",
    [
        ("C_flair.nii.gz", (2000, 2000, 2000), np.int16, r"shape \(2000, 2000, 2000\), more than 512 voxels"),
        ("C_flair.nii", (2000, 2000, 2000), np.int16, "more than 512 voxels"),
        ("C_flair.nii", (200, 200, 200), np.int16, "the file is 10,352 bytes but its header describes 16,000,352"),
        ("C_flair.nii.gz", (500, 500, 500), np.float32, "more than a .*-byte gzip file can hold"),
    ],
    ids=["gz-huge", "nii-huge", "nii-short", "gz-short"],
)
def test_header_size_is_checked_before_any_allocation(tmp_path, name, shape, dtype, message):
    import tracemalloc

    case_dir = tmp_path / "C"
    case_dir.mkdir()
    _lying_header(case_dir / name, shape, dtype)
    case = discover_cases(tmp_path)[0][0]
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=message) as err:
            load_case(case, ("flair",))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert name in str(err.value)
    assert peak < 20e6  # refused from the header alone, not after allocating the claimed volume


def test_voxel_limit_can_be_raised(tmp_path, monkeypatch):
    case = _one_case(tmp_path)  # 48 x 48 x 24
    monkeypatch.setenv("UAD_MAX_VOXELS_PER_AXIS", "40")
    with pytest.raises(DataError, match="more than 40 voxels.*UAD_MAX_VOXELS_PER_AXIS"):
        load_case(case, ("flair",))
    assert load_case(case, ("flair",), max_voxels_per_axis=48).images.shape == (1, 48, 48, 24)
    monkeypatch.setenv("UAD_MAX_VOXELS_PER_AXIS", "lots")
    with pytest.raises(ConfigError, match="UAD_MAX_VOXELS_PER_AXIS"):
        load_case(case, ("flair",))


def _rgb(shape=(48, 48, 24)):
    rgb = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 100
    return rgb


@pytest.mark.parametrize(
    "make, message",
    [
        (_rgb, "unsupported voxel type RGB"),
        (lambda: phantom()[0]["flair"] + 100, r"background is not 0: only 0\.0% of voxels are exactly 0.*skull-stripped"),
        (lambda: np.ones((48, 48, 24), np.int16), "background is not 0"),
        (lambda: np.where(phantom()[0]["flair"] > 0, 500, 0).astype(np.int16), "constant volume: every non-zero voxel is 500"),
    ],
    ids=["rgb", "not-skull-stripped", "constant-everywhere", "constant-inside"],
)
def test_volumes_the_brain_mask_cannot_handle_are_refused(tmp_path, make, message):
    case = _one_case(tmp_path)
    _overwrite(case.modalities["t1"], make())
    with pytest.raises(DataError, match=message) as err:
        load_case(case, ("flair", "t1"))
    assert "C_t1.nii.gz" in str(err.value)


def test_one_bad_case_skips_only_that_case(make_cohort, monkeypatch, capsys):
    from uad import cli

    root = make_cohort(2)
    vols, seg = phantom()
    write_case(root, "rgb", dict(vols, flair=_rgb()), seg)
    write_case(root, "unstripped", dict(vols, flair=vols["flair"] + 100), seg)
    write_case(root, "bug", vols, seg)
    real = store_mod.preprocess_case

    def buggy(case, config):  # an unexpected exception (a bug, an exotic file) in one case only
        if case.case_id == "bug":
            raise TypeError("something nobody anticipated")
        return real(case, config)

    monkeypatch.setattr(store_mod, "preprocess_case", buggy)
    store = build_store(root, SMALL, workers=1, progress=False)
    assert store.case_ids == ["BraTS2021_00000", "BraTS2021_00001"]
    reasons = {s.case_id: s.reason for s in store.skipped}
    assert sorted(reasons) == ["bug", "rgb", "unstripped"]
    assert "rgb_flair.nii.gz: unsupported voxel type RGB" in reasons["rgb"]
    assert "unstripped_flair.nii.gz: background is not 0" in reasons["unstripped"]
    assert "TypeError: something nobody anticipated" in reasons["bug"] and str(root / "bug") in reasons["bug"]
    assert (store.root / "manifest.json").is_file()
    assert cli.main(["prepare", "--data", str(root), "--image-size", "64", "--workers", "1"]) == 0
    assert "rgb: " in capsys.readouterr().out


def test_unreadable_case_folder_is_one_skipped_case(make_cohort, monkeypatch):
    import os
    from pathlib import Path

    root = make_cohort(2)
    locked = write_case(root, "locked", *phantom())
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make this folder fail as it would for anyone else
        real_iterdir = Path.iterdir

        def iterdir(self):
            if self == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return real_iterdir(self)

        monkeypatch.setattr(Path, "iterdir", iterdir)
    try:
        cases, skipped = discover_cases(root)
        assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00001"]
        assert [s.case_id for s in skipped] == ["locked"]
        assert f"cannot read folder {locked} (Permission denied)" in skipped[0].reason
        store = build_store(root, SMALL, workers=1, progress=False)
        assert store.case_ids == ["BraTS2021_00000", "BraTS2021_00001"] and store.skipped[0].case_id == "locked"
    finally:
        locked.chmod(0o755)


def test_full_disk_is_a_clear_error_naming_the_path(make_cohort, monkeypatch, capsys):
    import errno

    from uad import cli

    root = make_cohort(2)

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_save_array", full)
    with pytest.raises(DataError, match="disk full") as err:
        build_store(root, SMALL, workers=1, progress=False)
    assert str(store_mod.store_dir(root, SMALL) / "cases" / "BraTS2021_00000") in str(err.value)
    assert cli.main(["prepare", "--data", str(root), "--image-size", "64", "--workers", "1"]) == 2
    message = capsys.readouterr().err.split("error: ", 1)[-1]  # after the progress bar
    assert "BraTS2021_00000: disk full" in message and message.count("\n") == 1


def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(make_cohort, caplog):
    root = make_cohort(2)
    store = build_store(root, SMALL, workers=1, progress=False)
    cid = store.case_ids[0]
    case_dir = store.root / "cases" / cid
    good = np.array(store.case(cid).images)
    del store
    images = case_dir / "images.npy"
    data = images.read_bytes()
    images.write_bytes(data[: len(data) // 2])  # e.g. a crash before the data reached the disk

    with caplog.at_level("WARNING", logger="uad.data.store"):  # the read side rebuilds it from its source
        np.testing.assert_array_equal(SliceStore(store_mod.store_dir(root, SMALL)).case(cid).images, good)
    assert f"{case_dir}: damaged cache entry (images.npy has" in caplog.text
    images.write_bytes(data[: len(data) // 2])
    caplog.clear()
    with caplog.at_level("WARNING", logger="uad.data.store"):
        store = build_store(root, SMALL, workers=1, progress=False)
    assert f"{case_dir}: damaged cache entry (images.npy has" in caplog.text
    np.testing.assert_array_equal(store.case(cid).images, good)

    # Same size, other bytes at the end (where an unflushed write shows): found by the sampled hash.
    tumour = case_dir / "tumour.npy"
    tumour.write_bytes(tumour.read_bytes()[:-4] + b"\xff\xff\xff\xff")
    caplog.clear()
    with caplog.at_level("WARNING", logger="uad.data.store"):
        build_store(root, SMALL, workers=1, progress=False)
    assert "damaged cache entry (tumour.npy does not hold what was written" in caplog.text
    assert store_mod.entry_problem(case_dir, store_mod._read_meta(case_dir)) is None
