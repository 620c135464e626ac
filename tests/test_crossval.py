"""Recorded patient lists, k-fold splits and the cross-validation that the real-data benchmark runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import phantom, write_case

from uad.core.errors import ConfigError
from uad.data.splits import check_case_lists, kfold_cases
from uad.evaluation.crossval import CrossValConfig, MethodSpec, cross_validate
from uad.evaluation.evaluate import evaluate
from uad.models import create_model
from uad.models.base import residual_map
from uad.training.config import TrainConfig
from uad.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _cohort(root: Path, n: int) -> Path:
    for i in range(n):
        vols, seg = phantom(seed=i, tumour=True)
        write_case(root, f"BraTS2021_{i:05d}", vols, seg)
    return root


def test_kfold_tests_every_patient_exactly_once_and_never_trains_on_it():
    ids = [f"P{i:02d}" for i in range(23)]
    folds = kfold_cases(ids, folds=5, seed=3, val_cases=2)
    tested = sorted(c for f in folds for c in f["test"])
    assert tested == ids
    for f in folds:
        assert not set(f["test"]) & set(f["train"]) and not set(f["test"]) & set(f["val"])
        assert not set(f["train"]) & set(f["val"]) and len(f["val"]) == 2
        assert sorted(f["train"] + f["val"] + f["test"]) == ids
    assert kfold_cases(ids, 5, 3, 2) == folds  # deterministic per seed
    with pytest.raises(ConfigError):
        kfold_cases(ids[:3], folds=5)


def test_case_lists_are_validated():
    with pytest.raises(ConfigError, match="both"):
        check_case_lists({"train": ["a", "b"], "test": ["b"]})
    with pytest.raises(ConfigError, match="no training case"):
        check_case_lists({"train": [], "test": ["b"]})
    with pytest.raises(ConfigError):
        check_case_lists({"train": ["a"], "holdout": ["b"]})


def test_evaluate_uses_the_recorded_split_when_cases_come_and_go(tmp_path):
    """Issue #10's repro: a case fewer must not move training patients into the test set."""
    root = _cohort(tmp_path / "cohort", 8)
    lists = {"train": [f"BraTS2021_{i:05d}" for i in range(5)], "val": ["BraTS2021_00005"],
             "test": ["BraTS2021_00006", "BraTS2021_00007"]}
    run = train(TrainConfig(model="autoencoder", data=str(root), image_size=64, epochs=1, batch_size=8, cases=lists),
                run_dir=tmp_path / "run", progress=False)
    assert json.loads((run / "best" / "checkpoint.json").read_text())["split"]["cases"] == lists

    # Hard-link all but one test case into another folder, as a user re-organising data would.
    other = tmp_path / "other"
    for case in sorted(root.iterdir())[:-1]:
        (other / case.name).mkdir(parents=True)
        for f in case.iterdir():
            os.link(f, other / case.name / f.name)
    m = evaluate(run, data=other, out=tmp_path / "eval", n_boot=10, progress=False)
    assert m["eval_cases"] == ["BraTS2021_00006"]
    assert m["missing_cases"] == ["BraTS2021_00007"]
    assert m["calibration_cases"] == ["BraTS2021_00005"]
    assert m["split_source"] == "recorded"

    # --split all on another folder is allowed, labelled external, and names the training cases it scores.
    m = evaluate(run, data=other, split="all", out=tmp_path / "eval_all", n_boot=10, progress=False)
    assert m["split_source"] == "external"
    assert set(m["training_cases_evaluated"]) == set(lists["train"])


def test_evaluate_refuses_a_test_split_that_overlaps_training(tmp_path):
    root = _cohort(tmp_path / "cohort", 5)
    lists = {"train": ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"], "val": ["BraTS2021_00003"],
             "test": ["BraTS2021_00004"]}
    run = train(TrainConfig(model="autoencoder", data=str(root), image_size=64, epochs=1, batch_size=8, cases=lists),
                run_dir=tmp_path / "run", progress=False)
    # Tamper with the recorded lists so that test and train overlap: evaluation must refuse. Edited, the
    # record's hash no longer matches; sealed again, its own check of the lists refuses the overlap.
    from uad.checkpoints.record import canonical_hash
    from uad.core.errors import CheckpointError

    meta_path = run / "best" / "checkpoint.json"
    meta = {k: v for k, v in json.loads(meta_path.read_text()).items() if k != "record_sha256"}
    meta["split"]["cases"]["test"] = ["BraTS2021_00000", "BraTS2021_00004"]
    meta_path.write_text(json.dumps(meta | {"record_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="changed after it was saved"):
        evaluate(run / "best", data=root, out=tmp_path / "eval", n_boot=10, progress=False)
    meta_path.write_text(json.dumps(meta | {"record_sha256": canonical_hash(meta)}))
    with pytest.raises(CheckpointError, match="BraTS2021_00000 is in both the train and the test list"):
        evaluate(run / "best", data=root, out=tmp_path / "eval", n_boot=10, progress=False)


def test_training_with_case_lists_names_missing_cases(tmp_path):
    root = _cohort(tmp_path / "cohort", 3)
    lists = {"train": ["BraTS2021_00000", "nobody"], "test": ["BraTS2021_00002"]}
    with pytest.raises(ConfigError, match="nobody"):
        train(TrainConfig(model="autoencoder", data=str(root), image_size=64, epochs=1, cases=lists),
              run_dir=tmp_path / "run", progress=False)


def test_cross_validation_pools_every_patient_once_and_reuses_finished_folds(tmp_path):
    root = _cohort(tmp_path / "cohort", 6)
    config = CrossValConfig(data=str(root), methods=[MethodSpec("autoencoder", options={"bottleneck": "unet"}, epochs=1)],
                            image_size=64, folds=3, val_cases=1, n_boot=20)
    out = cross_validate(config, tmp_path / "cv", progress=False)
    assert set(out["methods"]) == {"autoencoder", "intensity", "brain_area"}
    tested = sorted(c for f in out["folds"] for c in f["test"])
    assert tested == sorted(f"BraTS2021_{i:05d}" for i in range(6))
    for m in out["methods"].values():
        assert len(m["per_fold"]) == 3
        assert m["n_slices"] == sum(f["n_slices"] for f in m["per_fold"])
        assert 0.0 <= m["pixel_ap"] <= 1.0 and m["best_dice"]["oracle"] is True
        assert [t["rate"] for t in m["healthy_fpr_thresholds"]] == [0.01, 0.05, 0.10]
        assert len(m["healthy_fpr_thresholds"][0]["per_fold_thresholds"]) == 3
    saved = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert saved["methods"]["intensity"]["pixel_ap"] == out["methods"]["intensity"]["pixel_ap"]
    # A second call reuses the completed fold runs instead of training again (the kept fold tallies are
    # removed first, or nothing would even be scored).
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cv" / "runs").glob("*/best/model.safetensors")}
    shutil.rmtree(tmp_path / "cv" / "folds")
    again = cross_validate(config, tmp_path / "cv", progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["methods"]["autoencoder"]["pixel_ap"] == pytest.approx(out["methods"]["autoencoder"]["pixel_ap"])
    # Fold runs trained before a setting existed (here data_on_device) are reused while it is at its default.
    for path in (tmp_path / "cv" / "runs").glob("*/config.json"):
        cfg = json.loads(path.read_text())
        del cfg["train"]["data_on_device"]
        path.write_text(json.dumps(cfg))
    shutil.rmtree(tmp_path / "cv" / "folds")
    cross_validate(config, tmp_path / "cv", progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # A fold folder holding a run of another configuration is moved aside, never overwritten in place.
    stale = tmp_path / "cv" / "runs" / "autoencoder-bottleneck=unet-e1-fold1"
    cfg = json.loads((stale / "config.json").read_text())
    cfg["train"]["lr"] = 0.5
    (stale / "config.json").write_text(json.dumps(cfg))
    shutil.rmtree(tmp_path / "cv" / "folds")
    cross_validate(config, tmp_path / "cv", progress=False)
    assert list(stale.parent.glob(f"{stale.name}.old-*/config.json"))
    assert json.loads((stale / "config.json").read_text())["train"]["lr"] == config.lr


def test_unet_autoencoder_keeps_shape_and_positive_residual_ignores_dark_misses():
    model = create_model("autoencoder", bottleneck="unet", image_size=64, in_channels=2)
    x = torch.rand(3, 2, 64, 64)
    assert model(x).shape == x.shape
    x = torch.zeros(1, 1, 4, 4)
    recon = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0], recon[0, 0, 1, 1] = 0.5, 0.5  # one brighter-than-expected pixel, one darker
    assert residual_map(x, recon, "abs")[0, 0].nonzero().tolist() == [[0, 0], [1, 1]]
    assert residual_map(x, recon, "positive")[0, 0].nonzero().tolist() == [[0, 0]]
    with pytest.raises(ConfigError):
        create_model("autoencoder", residual="negative")


def test_real_bench_skips_cleanly_without_real_data(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_bench.py"), "--data", str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "skipped" in proc.stdout


REAL_DEV = REPO.parent / "shared" / "data" / "real_dev"


@pytest.mark.skipif(not REAL_DEV.is_dir(), reason=f"no real data at {REAL_DEV}")
def test_real_bench_quick_runs_end_to_end_on_real_scans(tmp_path):
    """CI's check of the real-data benchmark: one fold, one epoch, 64 px, every model beside both baselines."""
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_bench.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "UAD_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((out / "crossval.json").read_text())
    assert set(result["methods"]) == {"autoencoder", "vae", "gan", "ganomaly", "vit", "intensity", "brain_area"}
    assert all(m["n_slices"] > 0 for m in result["methods"].values())
    assert "baseline: intensity" in proc.stdout


def test_a_method_scores_with_todays_residual_default_unless_it_names_one():
    # A fold run trained before the default changed records residual="abs" in its hyper-parameters;
    # re-running the same command must still score it as the method's label says.
    from uad.core.errors import ConfigError
    from uad.evaluation.crossval import MethodSpec
    from uad.scoring.recipe import ScoringRecipe

    base = ScoringRecipe()
    assert MethodSpec("vae").recipe(base).residual == "positive"
    assert MethodSpec("vae", score_options={"residual": "abs"}).recipe(base).residual == "abs"
    assert MethodSpec("vae", options={"residual": "abs"}).recipe(base).residual == "abs"  # trained so: scored so
    r = MethodSpec("gan", score_options={"slice_score": "model"}).recipe(base)
    assert r.residual == "positive" and r.post.slice_score == "model"
    with pytest.raises(ConfigError, match="not a scoring option"):
        MethodSpec("vit", score_options={"depth": 2}).recipe(base)


def test_cohort_modalities_keeps_only_patients_with_every_sequence(tmp_path):
    # FLAIR alone vs four channels must be compared on the same patients: those that have all four.
    root = _cohort(tmp_path / "cohort", 6)
    for i in (1, 4):
        (root / f"BraTS2021_{i:05d}" / f"BraTS2021_{i:05d}_t2.nii.gz").unlink()
    config = CrossValConfig(data=str(root), methods=[], image_size=64, folds=2, val_cases=1, n_boot=10,
                            cohort_modalities=("flair", "t2"))
    out = cross_validate(config, tmp_path / "cv", progress=False)
    assert sorted(c for f in out["folds"] for c in f["test"]) == [f"BraTS2021_{i:05d}" for i in (0, 2, 3, 5)]
    assert out["config"]["cohort_modalities"] == ["flair", "t2"] and out["n_cases"] == 4


def test_kept_folds_pool_again_without_their_runs_and_a_changed_setting_scores_again(tmp_path, caplog):
    """The kept fold tallies are what lets a cross-validation resume on a machine that never had its runs."""
    root = _cohort(tmp_path / "cohort", 4)
    specs = [MethodSpec("autoencoder", options={"bottleneck": "unet"}, epochs=1),
             MethodSpec("autoencoder", label="ae-b", options={"bottleneck": "unet", "base_channels": 8}, epochs=1),
             MethodSpec("ensemble", options={"members": ["autoencoder", "ae-b"]})]
    config = CrossValConfig(data=str(root), methods=specs, image_size=64, folds=2, val_cases=1, n_boot=20)
    cv = tmp_path / "cv"
    first = cross_validate(config, cv, progress=False)
    assert len(list((cv / "folds").glob("fold*/*.npz"))) == 2 * 5  # 3 methods and 2 baselines per fold
    assert first["methods"]["ensemble(autoencoder+ae-b)"]["per_fold_provenance"][0]["weights_sha256"][0]
    shutil.rmtree(cv / "runs")
    again = cross_validate(config, cv, progress=False)
    assert not (cv / "runs").exists()  # nothing trained: every fold came from its kept tally
    for name, m in first["methods"].items():
        for key in ("slice_auroc", "pixel_ap", "pixel_ap_ci", "best_dice", "healthy_fpr_thresholds"):
            assert again["methods"][name][key] == m[key], (name, key)
    assert again["paired"] == first["paired"]
    # A damaged kept fold is scored again (its runs are trained again), with a warning naming the file.
    damaged = next((cv / "folds" / "fold1").glob("intensity-*.npz"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="uad.crossval"):
        cross_validate(config, cv, progress=False)
    assert str(damaged) in caplog.text
    assert not (cv / "runs").exists()  # a baseline needs no run
    # Another training length for one member: it and the ensemble built on it are trained and scored again;
    # the other member's kept folds stay as they were.
    kept = {p: p.read_bytes() for p in (cv / "folds").glob("fold*/*.npz")}
    specs[1] = MethodSpec("autoencoder", label="ae-b", options={"bottleneck": "unet", "base_channels": 8}, epochs=2)
    cross_validate(replace(config, methods=specs), cv, progress=False)
    changed = {p.name.split("-")[0] for p, data in kept.items() if p.read_bytes() != data}
    assert changed == {"ae", "ensemble_autoencoder+ae"}
    assert sorted(p.name.split("-fold")[0] for p in (cv / "runs").iterdir()) == [
        "autoencoder-base_channels=8-bottleneck=unet-e2", "autoencoder-base_channels=8-bottleneck=unet-e2",
        "autoencoder-bottleneck=unet-e1", "autoencoder-bottleneck=unet-e1"]


def test_tally_files_round_trip_and_name_the_file_when_malformed(tmp_path):
    import numpy as np

    from uad.evaluation import tally_io
    from uad.evaluation.cohort import summarise

    root = _cohort(tmp_path / "cohort", 3)
    config = CrossValConfig(data=str(root), methods=[], image_size=64, folds=3, val_cases=1, n_boot=0, max_folds=1)
    cross_validate(config, tmp_path / "cv", progress=False)
    path = next((tmp_path / "cv" / "folds" / "fold1").glob("intensity-*.npz"))
    (t,), meta = (lambda r: (list(r[0].values()), r[1]))(tally_io.read(path, ["tally"]))
    assert meta["signature"]["method"] == "intensity"
    copy = tmp_path / "copy.npz"
    tally_io.write(copy, {"tally": t}, meta)
    (t2,), _ = (lambda r: (list(r[0].values()), r[1]))(tally_io.read(copy, ["tally"]))
    assert summarise(t2, 0, 0)[0] == summarise(t, 0, 0)[0]
    with np.load(copy) as z:
        arrays = dict(z)
    arrays["tally/counts"] = -arrays["tally/counts"] - 1
    np.savez(copy, **arrays)
    with pytest.raises(tally_io.TallyFileError, match=r"copy\.npz.*negative"):
        tally_io.read(copy, ["tally"])
    with pytest.raises(tally_io.TallyFileError, match=r"copy\.npz.*no array 'pos'"):
        np.savez(copy, **{k: v for k, v in arrays.items() if k != "tally/pos"})
        tally_io.read(copy, ["tally"])
    copy.write_bytes(b"not a zip")
    with pytest.raises(tally_io.TallyFileError, match=r"copy\.npz: unreadable"):
        tally_io.read(copy, ["tally"])


def test_a_changed_model_default_trains_and_scores_again_what_was_made_with_the_old_one(tmp_path):
    """Fold runs and kept folds from before the U-Net's default became full_res="lean" record no full_res (they
    were made with "norm"): the same command must not pool them as today's default autoencoder, while a method
    that names the value they were made with keeps them."""
    from uad.evaluation import tally_io

    root = _cohort(tmp_path / "cohort", 4)
    specs = [MethodSpec("autoencoder", epochs=1), MethodSpec("autoencoder", label="lean", options={"full_res": "lean"}, epochs=1)]
    config = CrossValConfig(data=str(root), methods=specs, image_size=64, folds=2, val_cases=1, n_boot=0)
    cv = tmp_path / "cv"
    cross_validate(config, cv, progress=False)
    for path in (cv / "folds").glob("fold*/*.npz"):  # as the files were written before signatures held hparams
        tallies, meta = tally_io.read(path, ["tally"])
        meta["signature"].pop("hparams", None)
        tally_io.write(path, tallies, meta=meta)
    for path in (cv / "runs").glob("*/config.json"):  # and the runs before their records held full_res
        saved = json.loads(path.read_text())
        saved["hparams"].pop("full_res")
        path.write_text(json.dumps(saved))
    kept = {p: p.read_bytes() for p in (cv / "folds").glob("fold*/*.npz")}
    cross_validate(config, cv, progress=False)
    changed = sorted({p.name.split("-")[0] for p, data in kept.items() if p.read_bytes() != data})
    assert changed == ["autoencoder"]  # "lean" (named) and the baselines kept; the default scored again ...
    assert len(list((cv / "runs").glob("autoencoder-e1-fold*.old-*"))) == 2  # ... after training again
    assert not list((cv / "runs").glob("autoencoder-full_res=lean-e1-fold*.old-*"))
