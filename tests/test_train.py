"""Trainer, run folders, checkpoints: status transitions, resume, cancel, refusal of bad checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uad.checkpoints import record as ckpt_record
from uad.checkpoints import weights as ckpt_weights
from uad.core.errors import CheckpointError, TrainingDiverged, UADError
from uad.runs import folders, listing
from uad.training.config import TrainConfig
from uad.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(image_size=64, batch_size=8, lr=1e-3)


@pytest.fixture
def cohort(make_cohort):
    return make_cohort(6)


def _config(cohort, **kw):
    return TrainConfig(**{"model": "autoencoder", "data": str(cohort), "epochs": 2, **TINY, **kw})


def test_completed_run_folder_and_lower_loss(cohort, tmp_path):
    run = train(_config(cohort, epochs=4), run_dir=tmp_path / "run", progress=False)
    for name in ("config.json", "status.json", "metrics.jsonl", "train.log", "best/model.safetensors",
                 "best/checkpoint.json", "last/model.safetensors", "last/checkpoint.json"):
        assert (run / name).is_file(), name
    status = folders.read_status(run)
    assert status["state"] == "completed" and status["epoch"] == 4
    lines = folders.read_metrics(run)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert lines[-1]["train"]["loss"] < lines[0]["train"]["loss"]
    assert all(r["slices_per_s"] > 0 and r["val_loss"] > 0 for r in lines)
    info = json.loads((run / "best" / "checkpoint.json").read_text())
    assert info["model"] == "autoencoder" and info["preprocess"]["image_size"] == 64
    assert info["best_val_loss"] == min(r["val_loss"] for r in lines)
    assert {"torch", "uad", "numpy", "python"} <= set(info["versions"])
    config = json.loads((run / "config.json").read_text())
    split = config["split"]["cases"]
    assert not set(split["train"]) & set(split["test"]) and not set(split["train"]) & set(split["val"])


def test_epoch_loss_means_count_only_the_batches_that_logged_them(cohort, tmp_path, monkeypatch):
    # A multi-phase model (f-AnoGAN) logs different losses before and after its switch, mid-epoch:
    # each loss's mean must be over its own batches, not diluted by the other phase's.
    from uad.models import model_class

    def two_phases(self, x, optimizers, progress):
        return {"first": 1.0} if progress < 0.5 else {"second": 3.0}

    monkeypatch.setattr(model_class("autoencoder"), "training_step", two_phases)
    run = train(_config(cohort, epochs=1, batch_size=2), run_dir=tmp_path / "run", progress=False)
    assert folders.read_metrics(run)[0]["train"] == {"first": 1.0, "second": 3.0}


def test_failed_run_records_the_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UADError):
        train(TrainConfig(model="ae", data=str(empty), **TINY), run_dir=tmp_path / "run", progress=False)
    status = folders.read_status(tmp_path / "run")
    assert status["state"] == "failed" and "no usable case" in status["error"]
    assert status["end"]["kind"] == "failed" and "no usable case" in status["end"]["reason"]


def test_resume_continues_at_the_saved_epoch(cohort, tmp_path):
    run = train(_config(cohort, epochs=1), run_dir=tmp_path / "run", progress=False)
    cfg = _config(cohort, epochs=3)
    train(cfg, run_dir=run, resume=True, progress=False)
    assert [r["epoch"] for r in folders.read_metrics(run)] == [1, 2, 3]
    assert folders.read_status(run)["state"] == "completed"
    assert json.loads((run / "last" / "checkpoint.json").read_text())["epoch"] == 3


def test_a_run_from_before_a_default_changed_resumes_as_the_model_it_is(cohort, tmp_path):
    """A run trained when the U-Net's default full-resolution stage was "norm" records no full_res (neither in its
    options nor in its checkpoint): resumed after the default became "lean", it continues its own architecture."""
    run = train(_config(cohort, epochs=1, model_options={"full_res": "norm"}), run_dir=tmp_path / "run", progress=False)
    meta = run / "last" / ckpt_record.META
    info = {k: v for k, v in json.loads(meta.read_text()).items() if k != "record_sha256"}
    info["hparams"].pop("full_res")
    meta.write_text(json.dumps({**info, "record_sha256": ckpt_record.canonical_hash(info)}))
    train(_config(cohort, epochs=2), run_dir=run, resume=True, progress=False)  # options as the old run recorded them
    assert folders.read_status(run)["state"] == "completed"
    assert ckpt_weights.load(run / "last").model.hparams["full_res"] == "norm"


def test_sigterm_cancels_with_a_loadable_checkpoint(cohort, tmp_path):
    run = tmp_path / "run"
    log = open(tmp_path / "out.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uad", "train", "--model", "autoencoder", "--data", str(cohort), "--image-size", "64",
         "--epochs", "500", "--batch-size", "4", "--out", str(run), "--no-progress"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not folders.read_metrics(run):
            assert proc.poll() is None, (tmp_path / "out.log").read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    status = folders.read_status(run)
    assert status["state"] == "cancelled" and "SIGTERM" in status["reason"]
    assert status["end"]["kind"] == "cancelled" and status["end"]["epoch"] >= 2 and status["end"]["batches"] > 0
    ckpt = ckpt_weights.load(run / "last")
    assert ckpt.info["epoch"] >= 1 and ckpt.info["epoch"] == status["end"]["epochs_done"]


def test_slices_held_on_the_device_train_to_the_same_weights_as_the_loader(cohort, tmp_path):
    """data_on_device (the GPU-resident training set) draws the loader's batches in the loader's order: with one
    seed both paths end with the same weights. On the CPU the 'device' is RAM, the path is the same code."""
    from safetensors.torch import load_file

    runs = {flag: train(_config(cohort, data_on_device=flag, epochs=2), run_dir=tmp_path / f"run-{flag}", progress=False)
            for flag in (False, True)}
    logs = {flag: (run / "train.log").read_text() for flag, run in runs.items()}
    assert "training slices held on cpu" in logs[True] and "held on" not in logs[False]
    weights = {flag: load_file(run / "last" / "model.safetensors") for flag, run in runs.items()}
    assert weights[True].keys() == weights[False].keys()
    for name, value in weights[False].items():
        assert torch.allclose(weights[True][name].float(), value.float(), rtol=1e-5, atol=1e-6), name
    losses = {flag: [r["train"]["loss"] for r in folders.read_metrics(run)] for flag, run in runs.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_data_on_device_is_automatic_only_on_cuda_and_checked(cohort):
    from uad.core.errors import ConfigError
    from uad.data.dataset import SliceDataset
    from uad.training import trainer

    assert TrainConfig.from_dict({"model": "autoencoder"}).data_on_device is None  # runs saved before the option
    with pytest.raises(ConfigError, match="data on device"):
        TrainConfig(model="autoencoder", data_on_device="yes")
    store = trainer._load_data(_config(cohort), progress=False, rank=0, world=1)[1]
    ds = SliceDataset(store, store.case_ids, healthy_only=True)
    cpu = torch.device("cpu")
    assert not trainer._data_on_device(_config(cohort), ds, cpu)  # automatic: CUDA only
    assert trainer._data_on_device(_config(cohort, data_on_device=True), ds, cpu)
    images = ds.images_on(cpu)
    assert images.dtype == torch.float32 and images.shape == (len(ds), 1, 64, 64)  # float16 on an accelerator
    assert ds.image_nbytes == images.numel() * 2
    for i in (0, len(ds) // 2, len(ds) - 1):  # the loader's slice, exactly
        assert torch.equal(images[i].float(), ds[i])


def test_checkpoint_roundtrip_gives_identical_outputs(cohort, tmp_path):
    run = train(_config(cohort, epochs=1), run_dir=tmp_path / "run", progress=False)
    a = ckpt_weights.load(run)
    b = ckpt_weights.load(run / "best" / "checkpoint.json")
    x = torch.rand(2, 1, 64, 64)
    assert torch.equal(a.model.anomaly_map(x).anomaly_map, b.model.anomaly_map(x).anomaly_map)
    half = ckpt_weights.save(tmp_path / "half", a.model, dict(a.info), dtype=torch.float16)
    c = ckpt_weights.load(half)
    assert torch.allclose(a.model.anomaly_map(x).anomaly_map, c.model.anomaly_map(x).anomaly_map, atol=2e-2)


def reseal(folder, **changes):
    """Edit checkpoint.json and seal it again with its record hash, as someone who knows the format could:
    what is left to refuse it are the checks of its fields."""
    path = folder / "checkpoint.json"
    info = {k: v for k, v in json.loads(path.read_text()).items() if k != "record_sha256"}
    info.update(changes)
    path.write_text(json.dumps({**info, "record_sha256": ckpt_record.canonical_hash(info)}))


def test_bad_checkpoints_are_refused_with_clear_errors(cohort, tmp_path):
    from uad.data import PreprocessConfig

    run = train(_config(cohort, epochs=1), run_dir=tmp_path / "run", progress=False)
    good = run / "best"

    def variant(name):
        dst = tmp_path / name
        shutil.copytree(good, dst)
        return dst

    truncated = variant("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt_weights.load(truncated)

    garbage = variant("garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00" * 100)
    reseal(garbage, weights_sha256=hashlib.sha256(b"\x00" * 100).hexdigest())
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ckpt_weights.load(garbage)

    bad_json = variant("badjson")
    (bad_json / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint description"):
        ckpt_weights.load(bad_json)

    other = variant("other")
    reseal(other, model="vae")
    with pytest.raises(CheckpointError, match="checkpoint.json: model .vae. has no option bottleneck"):
        ckpt_weights.load(other)

    resized = variant("resized")
    # every layer's shape changes (latent_dim is unused by the U-Net)
    reseal(resized, hparams={**json.loads((resized / "checkpoint.json").read_text())["hparams"], "base_channels": 7})
    with pytest.raises(CheckpointError, match="weights do not fit model autoencoder"):
        ckpt_weights.load(resized)

    with pytest.raises(CheckpointError, match="is a autoencoder checkpoint, not vit"):
        ckpt_weights.load(good, expect_model="vit")
    with pytest.raises(CheckpointError, match="trained on modalities flair, but the data asks for flair t2"):
        ckpt_weights.load(good, preprocess=PreprocessConfig(modalities=("flair", "t2"), image_size=64))
    with pytest.raises(CheckpointError, match="trained at image size 64"):
        ckpt_weights.load(good, preprocess=PreprocessConfig(image_size=128))
    with pytest.raises(CheckpointError, match="no such run"):
        ckpt_weights.load(tmp_path / "nowhere")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
@pytest.mark.parametrize("model", ["autoencoder", "gan"])  # gan: three optimizers, double backward
def test_torchrun_two_gloo_ranks_end_with_identical_weights(cohort, tmp_path, model):
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "uad", "train",
         "--model", model, "--data", str(cohort), "--image-size", "64", "--epochs", "2", "--batch-size", "4",
         "--device", "cpu", "--out", str(run), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = folders.read_status(run)
    assert status["state"] == "completed" and status["world_size"] == 2
    sums = status["rank_weight_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]


def test_a_folder_that_holds_a_run_is_refused_unless_resumed_or_overwritten(cohort, tmp_path, capsys):
    from uad.cli import main

    run = train(_config(cohort, epochs=1), run_dir=tmp_path / "run", progress=False)
    files = lambda: {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "run.lock"}  # noqa: E731
    before = files()
    args = ["train", "--model", "vae", "--data", str(cohort), "--image-size", "64", "--epochs", "1",
            "--batch-size", "8", "--out", str(run), "--no-progress"]
    assert main(args) == 2
    assert f"{run}: already holds a run" in capsys.readouterr().err
    assert files() == before  # not touched, not even status.json

    assert main(args + ["--overwrite"]) == 0
    assert ckpt_record.CheckpointRecord.read(run).model == "vae"
    assert [r["epoch"] for r in folders.read_metrics(run)] == [1]
    (aside,) = tmp_path.glob("run.old-*")  # the old run, moved aside whole, still usable
    assert ckpt_weights.load(aside).info["model"] == "autoencoder"
    assert folders.read_status(aside)["state"] == "completed" and [r["epoch"] for r in folders.read_metrics(aside)] == [1]

    assert main(args + ["--overwrite", "--resume", str(run)]) == 2
    assert "choose one" in capsys.readouterr().err

    lock = folders.RunLock(run).acquire()  # as a trainer in another process would hold it
    try:
        assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
        assert f"{run}: another training process (pid {os.getpid()}) is writing" in capsys.readouterr().err
    finally:
        lock.release()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert [r["epoch"] for r in folders.read_metrics(run)] == [1, 2]


def test_a_folder_the_app_reserved_is_trained_into(cohort, tmp_path):
    # The app creates the folder with a queued status (and its own launch files) before starting the trainer.
    run = tmp_path / "run"
    folders.write_status(run.mkdir() or run, "queued", model="autoencoder")
    (run / "launch.json").write_text("{}")
    train(_config(cohort, epochs=1), run_dir=run, progress=False)
    assert folders.read_status(run)["state"] == "completed"


def test_a_second_trainer_on_a_folder_in_use_fails_fast(cohort, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "uad", "train", "--model", "autoencoder", "--data", str(cohort), "--image-size", "64",
            "--batch-size", "4", "--no-progress"]
    first = subprocess.Popen(argv + ["--epochs", "500", "--out", str(run)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (folders.read_status(run) or {}).get("state") != "running":
            assert first.poll() is None, first.stderr.read().decode()
            time.sleep(0.1)
        # Two more writers at once: a plain start, and one that would move the run aside.
        others = [subprocess.Popen(argv + ["--epochs", "1", "--out", str(run)] + extra, cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                  for extra in ([], ["--overwrite"])]
        for other in others:
            err = other.communicate(timeout=120)[1]
            assert other.returncode == 2, err
            assert f"{run}: another training process (pid {first.pid}) is writing this run folder" in err
        assert first.poll() is None and folders.read_status(run)["pid"] == first.pid
        assert not list(tmp_path.glob("run.old-*"))
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert folders.read_status(run)["state"] == "cancelled"


def test_without_validation_slices_best_follows_the_latest_epoch(cohort, tmp_path):
    run = train(_config(cohort, epochs=2, split_ratios=(1, 0, 0)), run_dir=tmp_path / "run", progress=False)
    best = ckpt_record.CheckpointRecord.read(run / "best")
    assert best.epoch == 2 and best.weights_sha256 == ckpt_record.CheckpointRecord.read(run / "last").weights_sha256
    assert best.best_selection == "latest epoch (no validation slices)"
    assert folders.read_status(run)["best_selection"] == "latest epoch (no validation slices)"


def test_a_diverged_run_fails_and_leaves_no_nan_checkpoint(cohort, tmp_path, capsys):
    from uad.cli import main

    run = tmp_path / "run"
    base = ["--model", "autoencoder", "--data", str(cohort), "--image-size", "64", "--batch-size", "8", "--no-progress"]
    assert main(["train", *base, "--epochs", "2", "--lr", "1e30", "--out", str(run)]) == 2
    assert f"{run}: training diverged (training loss 'loss' became nan" in capsys.readouterr().err
    status = folders.read_status(run)
    assert status["state"] == "failed" and status["reason"] == "diverged" and "training diverged" in status["error"]
    assert folders.read_metrics(run)[-1]["diverged"] is True
    assert not (run / "best").exists() and not (run / "last").exists()
    assert main(["evaluate", "--run", str(run)]) == 2  # a clear error, not a traceback
    assert "no checkpoint here" in capsys.readouterr().err
    assert main(["train", *base, "--lr", "inf", "--out", str(tmp_path / "inf")]) == 2
    err = capsys.readouterr().err
    assert "finite number" in err and "inf" in err and "Traceback" not in err


def test_a_nan_loss_keeps_the_good_checkpoints(cohort, tmp_path, monkeypatch):
    from uad.models import model_class

    cls = model_class("autoencoder")
    healthy = cls.training_step

    def breaks_in_epoch_two(self, x, optimizers, progress):
        if progress < 0.5:
            return healthy(self, x, optimizers, progress)
        with torch.no_grad():
            next(self.parameters()).fill_(float("nan"))
        return {"loss": float("nan")}

    monkeypatch.setattr(cls, "training_step", breaks_in_epoch_two)
    with pytest.raises(TrainingDiverged, match=r"training loss 'loss' became nan at step \d+, epoch 2"):
        train(_config(cohort, epochs=2), run_dir=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert folders.read_status(run)["reason"] == "diverged"
    for sub in ("best", "last"):
        ckpt = ckpt_weights.load(run / sub)
        assert ckpt.info["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt.model.state_dict().values())
    assert [r.get("diverged", False) for r in folders.read_metrics(run)] == [False, True]


# -- a run you can watch -------------------------------------------------------------------------------------
def test_a_run_records_progress_step_losses_samples_and_its_end(cohort, tmp_path, monkeypatch):
    import cv2

    from uad.models import model_class
    from uad.training import trainer as train_mod

    monkeypatch.setattr(train_mod, "STATUS_EVERY_S", 0.0)  # every batch, so the test sees in-epoch progress
    seen = []
    cls = model_class("autoencoder")
    real_step = cls.training_step

    def watched(self, x, optimizers, progress):
        seen.append(dict(folders.read_status(tmp_path / "run")))
        return real_step(self, x, optimizers, progress)

    monkeypatch.setattr(cls, "training_step", watched)
    run = train(_config(cohort, epochs=2, batch_size=4), run_dir=tmp_path / "run", progress=False)
    mid = [s for s in seen if s.get("batch")]
    assert mid, seen
    batches = mid[0]["batches"]
    assert batches > 2 and all(s["current_epoch"] in (1, 2) and 0 < s["batch"] <= batches for s in mid)
    assert all(s["eta"] is not None and s["eta"] >= 0 and s["elapsed"] >= 0 for s in mid)
    assert mid[-1]["step"] > mid[0]["step"]

    steps = folders.read_steps(run)
    assert len(steps) >= 2 and [r["step"] for r in steps] == sorted(r["step"] for r in steps)
    assert steps[-1]["step"] == folders.read_metrics(run)[-1]["step"]
    assert 0 < steps[0]["epoch"] <= 1 and steps[-1]["epoch"] == pytest.approx(2.0)
    assert all(r["train"]["loss"] > 0 for r in steps)

    grid = cv2.imread(str(run / folders.SAMPLES), cv2.IMREAD_GRAYSCALE)
    assert grid.shape == (3 * 64 + 2 * 2, 4 * 64 + 3 * 2)  # input / reconstruction / difference × 4 slices
    assert json.loads((run / folders.SAMPLES_INFO).read_text())["epoch"] == 2

    status = folders.read_status(run)
    assert status["state"] == "completed" and status["end"]["kind"] == "completed"
    assert status["end"]["epochs_done"] == 2 and status["end"]["batch"] == status["end"]["batches"] == batches


def test_a_time_budget_mid_epoch_is_recorded_as_such(cohort, tmp_path, monkeypatch):
    from uad.jobs import run_jobs
    from uad.models import model_class

    cls = model_class("autoencoder")
    real_step = cls.training_step

    def slow(self, x, optimizers, progress):
        time.sleep(0.05)
        return real_step(self, x, optimizers, progress)

    monkeypatch.setattr(cls, "training_step", slow)
    run = train(_config(cohort, epochs=3, batch_size=2, max_minutes=0.01), run_dir=tmp_path / "run", progress=False)
    status = folders.read_status(run)
    end = status["end"]
    assert status["state"] == "completed" and end["kind"] == "time_budget"
    assert end["epoch"] == 1 and 0 < end["batch"] < end["batches"] and end["epochs_done"] == 0
    assert status["epoch"] == 0  # the partial epoch is not counted as done (it used to read "completed 1/1")
    last = folders.read_metrics(run)[-1]
    assert last["partial"] is True and last["batches"] == [end["batch"], end["batches"]]
    assert ckpt_record.CheckpointRecord.read(run / "last").epoch == 0  # a resume trains epoch 1 again, in full
    (info,) = listing.list_runs(include_shipped=False, root=tmp_path)
    view = run_jobs.run_view(info)
    assert view.label == "time budget" and view.progress == 1.0
    assert view.outcome == f"stopped by its 0.01-min time budget in epoch 1/3 at batch {end['batch']}/{end['batches']}"
