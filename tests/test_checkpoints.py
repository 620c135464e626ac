"""Checkpoint folders: committed whole (a writer killed at any moment leaves a loadable folder), and refused
with a clear error when their weights are not finite or their hyper-parameters are out of bounds."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time

import pytest
import torch

from uad.checkpoints import record as ckpt_record
from uad.checkpoints import weights as ckpt_weights
from uad.core.errors import CheckpointError
from uad.models import create_model

TINY = dict(image_size=32, base_channels=4, latent_dim=8)


def _model_and_optimizers():
    torch.manual_seed(0)
    model = create_model("autoencoder", **TINY)
    optimizers = model.configure_optimizers(1e-3)
    model.training_step(torch.rand(2, 1, 32, 32), optimizers, 0.0)  # gives Adam some state to save
    return model, optimizers


def _save(folder, model, optimizers, i):
    with torch.no_grad():
        next(model.parameters()).fill_(float(i))  # each save's weights differ, and say which save they are
    ckpt_weights.save(folder, model, {"epoch": i}, optimizers=optimizers, training_state={"epoch": i, "step": i})


def _check_consistent(folder, optimizers):
    ckpt = ckpt_weights.load(folder)
    i = ckpt.info["epoch"]
    assert float(next(ckpt.model.parameters()).detach().flatten()[0]) == float(i)
    assert ckpt_weights.load_training_state(folder, optimizers)["epoch"] == i
    return i


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_writer_killed_at_any_moment_leaves_a_loadable_consistent_checkpoint(tmp_path):
    model, optimizers = _model_and_optimizers()
    folder = tmp_path / "last"
    _save(folder, model, optimizers, 0)
    rng = random.Random(0)
    seen = set()
    for attempt in range(25):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: save as fast as it can until killed
            try:
                os.close(r)
                i = 1000 * (attempt + 1)
                while True:
                    i += 1
                    _save(folder, model, optimizers, i)
                    os.write(w, b".")
            finally:
                os._exit(1)
        os.close(w)
        assert os.read(r, 1) == b"."  # at least one save done; now kill it somewhere in a later one
        time.sleep(rng.uniform(0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        seen.add(_check_consistent(folder, optimizers))
    assert len(seen) > 1
    # The next save clears what the killed writers left beside the folder.
    _save(folder, model, optimizers, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert _check_consistent(folder, optimizers) == 1


def test_a_folder_missing_between_the_two_renames_is_recovered(tmp_path):
    model, optimizers = _model_and_optimizers()
    folder = tmp_path / "last"
    _save(folder, model, optimizers, 1)
    dead = 2**22 + 12345  # above pid_max: never a live process
    os.rename(folder, tmp_path / f"last.old-{dead}")  # the old version, moved aside ...
    new = tmp_path / f"last.tmp-{dead}"  # ... and the complete new one, not yet renamed in
    shutil.copytree(tmp_path / f"last.old-{dead}", new)
    _save(new.parent / "scratch", model, optimizers, 2)
    for f in new.iterdir():
        shutil.copy(tmp_path / "scratch" / f.name, f)
    assert _check_consistent(folder, optimizers) == 2

    # Killed while writing the very first version: only an incomplete new folder, and nothing to load.
    empty = tmp_path / "first"
    (tmp_path / f"first.tmp-{dead}").mkdir()
    (tmp_path / f"first.tmp-{dead}" / ckpt_record.WEIGHTS).write_bytes(b"partial")
    with pytest.raises(CheckpointError, match="no such run or checkpoint folder"):
        ckpt_weights.load(empty)


def test_non_finite_weights_are_refused(tmp_path):
    model, _ = _model_and_optimizers()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    ckpt_weights.save(tmp_path / "nan", model, {})
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights contain NaN or infinite values"):
        ckpt_weights.load(tmp_path / "nan")


def test_out_of_range_hyper_parameters_are_refused_before_building(tmp_path):
    model, _ = _model_and_optimizers()
    ckpt_weights.save(tmp_path / "ckpt", model, {})

    def edit(**hparams):  # and seal the record again, as someone who knows the format could
        path = tmp_path / "ckpt" / ckpt_record.META
        info = {k: v for k, v in json.loads(path.read_text()).items() if k != "record_sha256"}
        info["hparams"].update(hparams)
        path.write_text(json.dumps({**info, "record_sha256": ckpt_record.canonical_hash(info)}))

    edit(latent_dim=100_000)
    with pytest.raises(CheckpointError, match=r"checkpoint.json: latent_dim must be between 1 and 4096, got 100000"):
        ckpt_weights.load(tmp_path / "ckpt")
    edit(latent_dim="8")
    with pytest.raises(CheckpointError, match="latent_dim must be a whole number"):
        ckpt_weights.load(tmp_path / "ckpt")
    # Within bounds but far larger than the file: found on a model built without memory, then refused.
    edit(latent_dim=8, base_channels=256, image_size=256)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="weights do not fit model autoencoder"):
        ckpt_weights.load(tmp_path / "ckpt")
    assert time.perf_counter() - t0 < 5


def _seal_without(path, drop):
    """Edit a checkpoint.json with ``drop(info)`` and seal it again: a record written before an option existed."""
    info = {k: v for k, v in json.loads(path.read_text()).items() if k != "record_sha256"}
    drop(info)
    path.write_text(json.dumps({**info, "record_sha256": ckpt_record.canonical_hash(info)}))


def test_a_record_that_predates_an_option_rebuilds_the_model_it_was_trained_as(tmp_path):
    """The U-Net's default full-resolution stage became "lean"; checkpoints written before full_res was recorded
    (the first shipped ones among them) hold "norm" weights and must still load as "norm", alone or in an ensemble."""
    torch.manual_seed(0)
    old = create_model("autoencoder", full_res="norm", **TINY)
    assert create_model("autoencoder", **TINY).hparams["full_res"] == "lean"
    ckpt_weights.save(tmp_path / "old", old, {})
    _seal_without(tmp_path / "old" / ckpt_record.META, lambda info: info["hparams"].pop("full_res"))
    loaded = ckpt_weights.load(tmp_path / "old")
    assert loaded.model.hparams["full_res"] == "norm"
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), old.state_dict().values()))

    member = {"model": "autoencoder", "hparams": dict(old.hparams)}
    ensemble = create_model("ensemble", image_size=32, members=[member, member], scales=[1.0, 2.0])
    ckpt_weights.save(tmp_path / "ensemble", ensemble, {})

    def drop_members(info):
        for m in info["hparams"]["members"]:
            m["hparams"].pop("full_res")

    _seal_without(tmp_path / "ensemble" / ckpt_record.META, drop_members)
    loaded = ckpt_weights.load(tmp_path / "ensemble")
    assert [m.hparams["full_res"] for m in loaded.model.members] == ["norm", "norm"]
