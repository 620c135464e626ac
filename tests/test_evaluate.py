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
from uad.data import PreprocessConfig, discover_cases, identity, preprocess_case
from uad.evaluation import summaries
from uad.evaluation.evaluate import evaluate
from uad.scoring.maps import score_case
from uad.scoring.nifti import write_nifti
from uad.scoring.postprocess import threshold_maps
from uad.scoring.recipe import PostprocessConfig, ScoringRecipe
from uad.scoring.scorers import IntensityBaseline
from uad.training.config import TrainConfig
from uad.training.trainer import train


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
    vs = score_case(IntensityBaseline(), pre, ScoringRecipe(post=PostprocessConfig(erode_brain=0, median_size=0)))
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
    assert [t["rate"] for t in m["healthy_fpr_thresholds"]] == [0.01, 0.05, 0.10]
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
    folder = run / "eval" / identity.dataset_ref(root).id / "test"  # per dataset and split
    assert (folder / "maps").is_dir() and any((folder / "maps").iterdir())
    out = capsys.readouterr().out
    assert f"autoencoder on {root.name}" in out and str(folder) in out
    assert cli(["compare", str(run), "--csv", str(tmp_path / "cmp.csv")]) == 0
    out = capsys.readouterr().out
    assert "intensity baseline" in out and "brain-area baseline" in out and root.name in out
    assert (tmp_path / "cmp.csv").read_text().startswith("method,kind,")
    assert cli(["compare", str(tmp_path)]) == 2  # no evaluation there: a clear error, not a traceback


def test_evaluate_writes_per_case_rows_and_progress(trained, tmp_path):
    import pandas as pd

    from uad.data import build_store

    root, run = trained
    m = evaluate(run, data=root, out=tmp_path / "ev", n_boot=0, progress=False)
    assert m["dataset"] == identity.dataset_ref(root).to_dict() and m["split"] == "test"
    assert json.loads((tmp_path / "ev" / "progress.json").read_text())["phase"] == "done"
    cases = pd.read_csv(tmp_path / "ev" / "cases.csv")
    assert list(cases.case_id) == m["eval_cases"]
    store = build_store(root, PreprocessConfig(image_size=64), progress=False)
    thr = summaries.operating_point(m, 0.05)["threshold"]
    for _, r in cases.iterrows():
        case = store.case(r.case_id)
        ml = case.geometry.voxel_ml
        if r.case_id == "unlabelled_case":
            assert not r.labelled and pd.isna(r.dice) and pd.isna(r.tumour_ml)
            continue
        # 1 mm isotropic phantoms: tumour volume = working voxels x (side / size)^2 mm^3
        assert r.tumour_ml == pytest.approx(np.asarray(case.tumour).sum() * ml, abs=1e-3)
        assert ml == pytest.approx((case.geometry.side / 64) ** 2 / 1000)
        assert 0 <= r.dice <= 1 and r.threshold == pytest.approx(thr) and r.detected_ml >= 0
        assert 0 <= r.slice_auroc <= 1 or pd.isna(r.slice_auroc)
    assert cases[cases.labelled].detected_ml.sum() > 0  # the bright phantom tumours are flagged somewhere


def test_working_voxel_ml_follows_the_spacing_and_orientation():
    from uad.data.preprocess import SliceGeometry

    def geometry(affine, ornt, side, size):
        return SliceGeometry((1, 1, 1), (1, 1, 1), affine, np.asarray(ornt, float), 0, 0, side, size, np.arange(1))

    g = geometry(np.diag([2.0, 1.0, 3.0, 1.0]), [[0, 1], [1, 1], [2, 1]], 100, 50)
    assert g.voxel_ml == pytest.approx(2 * 1 * 3 * 4 / 1000)
    # a source stored as (z, x, y): the in-plane axes are its second and third
    g = geometry(np.diag([3.0, 2.0, 1.0, 1.0]), [[2, 1], [0, 1], [1, 1]], 64, 64)
    assert g.voxel_ml == pytest.approx(6 / 1000)


def test_cli_report_is_self_contained_and_holds_the_metrics(trained, tmp_path, capsys):
    import re

    from uad.data import identity
    from uad.evaluation import columns, summaries

    root, run = trained
    assert cli(["evaluate", "--run", str(run), "--data", str(root), "--bootstrap", "20"]) == 0
    out = tmp_path / "r.html"
    assert cli(["report", "--run", str(run), "--out", str(out)]) == 0
    text = out.read_text()
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=\s*[\"']?(https?:)?//", text, re.I)  # nothing fetched
    assert "Plotly.newPlot" in text and text.count("data:image/png;base64,") >= 3  # curves and example slices
    m = summaries.EvaluationSummary.read(run / "eval" / identity.dataset_ref(root).id / "test")
    row = columns.cells(columns.comparison_rows([("x", m)])[0])
    for col in ("slice AUROC [95% CI]", "pixel AP [95% CI]", "best Dice*", columns.column(columns.dice_key(0.05)).label):
        assert row[col] in text, col
    for b in m.baselines.values():
        assert f"{b['slice_auroc']:.3f}" in text
    assert m.cases().case_id.iloc[0] in text
    assert not list(tmp_path.glob(".r.html*"))  # written atomically: no temporary left behind
    # a second dataset makes the choice explicit
    other = tmp_path / "other"
    import shutil

    shutil.copytree(root / "BraTS2021_00000", other / "BraTS2021_00000")
    assert cli(["evaluate", "--run", str(run), "--data", str(other), "--split", "all", "--bootstrap", "0"]) == 0
    capsys.readouterr()
    assert cli(["report", "--run", str(run), "--out", str(out)]) == 2
    assert "choose one with --dataset" in capsys.readouterr().err
    assert cli(["report", "--run", str(run), "--dataset", str(other), "--no-examples", "--out", str(out)]) == 0
    assert "other" in out.read_text()
    assert cli(["compare", str(run), "--dataset", str(other), "--csv", str(tmp_path / "c.csv")]) == 0


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
    from uad.checkpoints import weights as ckpt_weights
    from uad.scoring.scorers import ModelScorer

    ckpt = ckpt_weights.load(folder)
    assert ckpt.model.name == folder.name and ckpt.info["weights_dtype"] == "float16"
    assert (folder / "eval" / "metrics.json").is_file()
    pre = preprocess_case(demo_case, ckpt.preprocess)
    vs = score_case(ModelScorer(ckpt.model), pre, ScoringRecipe())
    assert vs.maps.shape == pre.tumour.shape and np.isfinite(vs.maps).all() and np.isfinite(vs.scores).all()
    assert vs.maps[vs.mask].max() > 0
