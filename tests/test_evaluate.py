"""Scoring, NIfTI export and evaluation on tiny phantom cohorts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import BRATS_AFFINE, phantom, write_case
from uad.cli import main as cli
from uad.data import PreprocessConfig, discover_cases, preprocess_case
from uad.evaluate import evaluate
from uad.score import IntensityBaseline, PostprocessConfig, score_case, threshold_maps, write_nifti
from uad.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny autoencoder run on 7 phantom cases (one unlabelled), shared by this module's tests.

    Every labelled case has a tumour (in some slices only), so the test split always holds one."""
    root = tmp_path_factory.mktemp("cohort")
    for i in range(6):
        vols, seg = phantom(seed=i, tumour=True)
        write_case(root, f"BraTS2021_{i:05d}", vols, seg)
    vols, _ = phantom(seed=7)
    write_case(root, "unlabelled_case", vols, None)
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("UAD_HOME", str(home))
    run = train(TrainConfig(model="autoencoder", data=str(root), image_size=64, epochs=1, batch_size=8), run_dir=home / "run", progress=False)
    mp.undo()
    return root, run


def test_planted_blob_lands_on_the_right_voxels_of_the_exported_map(tmp_path):
    vols, _ = phantom(tumour=False)
    blob = np.zeros(vols["flair"].shape, bool)
    blob[30:35, 12:17, 9:13] = True  # an off-centre box, so any flip or transpose would miss it
    vols["flair"][blob] = 3000
    write_case(tmp_path, "C", vols, None)
    case = discover_cases(tmp_path)[0][0]
    # Scale by the maximum (not the 99th percentile) so only the blob is near 1 in the map.
    pre = preprocess_case(case, PreprocessConfig(image_size=64, percentile_high=100))
    vs = score_case(IntensityBaseline(), pre, PostprocessConfig(erode_brain=0, median_size=0))
    out = write_nifti(vs.maps, pre.geometry, tmp_path / "C_anomaly.nii.gz")
    img = nib.load(str(out))
    assert img.shape == vols["flair"].shape
    np.testing.assert_allclose(img.affine, BRATS_AFFINE)
    vol = np.asarray(img.dataobj)
    # Stored as scaled int16: values come back within one quantisation step of the float map.
    np.testing.assert_allclose(vol, pre.geometry.to_source(vs.maps), atol=float(vs.maps.max()) / 32000)
    hot = vol > 0.5
    assert hot[blob].mean() > 0.7  # the blob is found ...
    assert hot[~blob].sum() < 0.5 * blob.sum()  # ... and little else


def test_threshold_maps_removes_small_components():
    maps = np.zeros((3, 10, 10), np.float32)
    maps[1, 2:5, 2:5] = 1.0  # 9 voxels
    maps[1, 8, 8] = 1.0  # 1 voxel
    pred = threshold_maps(maps, 0.5, min_component=5)
    assert pred.sum() == 9 and not pred[1, 8, 8]


def test_evaluate_writes_metrics_rows_and_curves(trained, tmp_path):
    root, run = trained
    m = evaluate(run, data=root, out=tmp_path / "eval", n_boot=50, progress=False)
    for key in ("slice_auroc", "slice_ap", "pixel_ap", "pixel_auroc", "best_dice", "healthy_fpr_thresholds",
                "slice_youden", "slice_best_f1", "slice_auroc_ci", "pixel_ap_ci"):
        assert key in m, key
    assert set(m["baselines"]) == {"intensity", "brain_area"}
    assert [t["healthy_fpr"] for t in m["healthy_fpr_thresholds"]] == [0.01, 0.05, 0.10]
    assert m["best_dice"]["oracle"] is True
    # the unlabelled case is scored (rows in slices.csv) but not counted in the metrics
    assert m["n_unlabelled_cases"] == 1 and "unlabelled_case" in m["eval_cases"]
    with open(tmp_path / "eval" / "slices.csv") as fh:
        rows = list(csv.DictReader(fh))
    config = json.loads((run / "config.json").read_text())
    test_cases = config["split"]["cases"]["test"]
    from uad.data import build_store

    store = build_store(root, PreprocessConfig(image_size=64), progress=False)
    expected = [(c, int(k)) for c in test_cases + ["unlabelled_case"] for k in store.case(c).table.slice_index]
    assert [(r["case_id"], int(r["slice_index"])) for r in rows] == expected
    assert {r["label"] for r in rows if r["case_id"] == "unlabelled_case"} == {""}
    labelled_rows = [r for r in rows if r["case_id"] != "unlabelled_case"]
    assert m["n_slices"] == len(labelled_rows)
    curves = json.loads((tmp_path / "eval" / "curves.json").read_text())
    assert set(curves) == {"autoencoder", "intensity", "brain_area"}
    # the intensity baseline finds the bright phantom tumours
    assert m["baselines"]["intensity"]["pixel_ap"] > 0.5


def test_bootstrap_intervals_are_deterministic_for_a_seed(trained, tmp_path):
    root, run = trained
    a = evaluate(run, data=root, out=tmp_path / "a", n_boot=40, seed=1, progress=False)
    b = evaluate(run, data=root, out=tmp_path / "b", n_boot=40, seed=1, progress=False)
    assert a["slice_auroc_ci"] == b["slice_auroc_ci"] and a["pixel_ap_ci"] == b["pixel_ap_ci"]
    lo, hi = a["pixel_ap_ci"]["low"], a["pixel_ap_ci"]["high"]
    assert lo <= a["pixel_ap"] <= hi


def test_cli_score_writes_a_map_on_the_case_grid(trained, tmp_path):
    root, run = trained
    assert cli(["score", "--run", str(run), "--case", str(root / "unlabelled_case"), "--out", str(tmp_path)]) == 0
    img = nib.load(str(tmp_path / "unlabelled_case_anomaly.nii.gz"))
    src = nib.load(str(root / "unlabelled_case" / "unlabelled_case_flair.nii.gz"))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine)


def test_cli_evaluate_and_compare(trained, tmp_path, capsys):
    root, run = trained
    assert cli(["evaluate", "--run", str(run), "--data", str(root), "--bootstrap", "20", "--save-maps"]) == 0
    assert (run / "eval" / "maps").is_dir() and any((run / "eval" / "maps").iterdir())
    assert cli(["compare", str(run), "--csv", str(tmp_path / "cmp.csv")]) == 0
    out = capsys.readouterr().out
    assert "baseline:intensity" in out and "baseline:brain_area" in out
    assert (tmp_path / "cmp.csv").read_text().startswith("method,")
    assert cli(["compare", str(tmp_path)]) == 2  # no evaluation there: a clear error, not a traceback


SHIPPED = sorted(p for p in (Path(__file__).resolve().parents[1] / "checkpoints").iterdir() if (p / "best").is_dir())


@pytest.fixture(scope="module")
def demo_case(tmp_path_factory):
    from uad.data.synth import case_name, case_plan, generate_case
    from uad.data.synth import write_case as write_synth

    root = tmp_path_factory.mktemp("demo")
    index = next(i for i in range(12) if case_plan(i, 0) > 0)  # a demo case with a tumour
    write_synth(root, case_name(index), generate_case(case_name(index), 0))
    return discover_cases(root)[0][0]


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoints_load_and_score_a_demo_case(folder, demo_case):
    from uad import checkpoints
    from uad.score import ModelScorer

    ckpt = checkpoints.load(folder)
    assert ckpt.model.name == folder.name and ckpt.info["weights_dtype"] == "float16"
    assert (folder / "eval" / "metrics.json").is_file()
    pre = preprocess_case(demo_case, ckpt.preprocess)
    vs = score_case(ModelScorer(ckpt.model), pre, PostprocessConfig())
    assert vs.maps.shape == pre.tumour.shape and np.isfinite(vs.maps).all() and np.isfinite(vs.scores).all()
    assert vs.maps[vs.mask].max() > 0
