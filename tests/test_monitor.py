"""The training monitor's records: each epoch once after a stop and a resume, learning rate and throughput per
epoch, sample reconstructions kept per epoch (bounded) and chosen where there is brain, tolerant readers."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from uad.runs import folders, history
from uad.training.config import TrainConfig
from uad.training.trainer import train

TINY = dict(image_size=64, batch_size=2, lr=1e-3)


@pytest.fixture
def cohort(make_cohort):
    return make_cohort(6)


def _slow_steps(monkeypatch, seconds: float = 0.05) -> None:
    from uad.models import model_class

    cls = model_class("autoencoder")
    real_step = cls.training_step

    def slow(self, x, optimizers, progress):
        time.sleep(seconds)
        return real_step(self, x, optimizers, progress)

    monkeypatch.setattr(cls, "training_step", slow)


# -- a stopped and resumed run, as the trainer writes it -----------------------------------------------------------
def test_a_resumed_run_has_each_epoch_once(cohort, tmp_path, monkeypatch):
    """Stopped mid-epoch 1 by its time budget, then resumed to 2 epochs: the trainer records epoch 1 twice
    (partial, then in full) and its step positions run back; the history has each epoch once, forward only."""
    _slow_steps(monkeypatch)
    config = TrainConfig(model="autoencoder", data=str(cohort), epochs=2, max_minutes=0.01, **TINY)
    run = train(config, run_dir=tmp_path / "run", progress=False)
    assert folders.read_metrics(run)[-1]["partial"] is True
    monkeypatch.undo()
    train(TrainConfig(model="autoencoder", data=str(cohort), epochs=2, **TINY), run_dir=run, resume=True, progress=False)

    raw_epochs = [r["epoch"] for r in folders.read_metrics(run)]
    raw_steps = [r["epoch"] for r in folders.read_steps(run)]
    assert raw_epochs == [1, 1, 2]  # what is on disk: the partial epoch 1, then epoch 1 trained again
    assert any(b <= a for a, b in zip(raw_steps, raw_steps[1:]))  # ... and the step positions run back

    h = history.read_history(run)
    assert [r.epoch for r in h.epochs] == [1, 2] and not any(r.partial for r in h.epochs)
    positions = [r.position for r in h.steps]
    assert all(b > a for a, b in zip(positions, positions[1:])) and positions[-1] == pytest.approx(2.0)
    assert h.superseded > 0
    assert all(r.lr == {"model": 1e-3} for r in h.epochs)  # learning rate per optimizer, every epoch
    assert all(r.slices_per_s and r.slices_per_s > 0 for r in h.epochs)
    assert all(r.gpu_memory_mb is None for r in h.epochs)  # recorded on a GPU only


def test_sample_reconstructions_are_kept_per_epoch_and_show_brain(cohort, tmp_path):
    from uad.data.dataset import SliceDataset
    from uad.data.store import SliceStore, store_dir
    from uad.training import trainer

    run = train(TrainConfig(model="autoencoder", data=str(cohort), epochs=3, **TINY), run_dir=tmp_path / "run", progress=False)
    kept = history.samples_by_epoch(run)
    assert [e for e, _ in kept] == [1, 2, 3] and all(p.stat().st_size > 0 for _, p in kept)
    assert (run / folders.SAMPLES).read_bytes() == kept[-1][1].read_bytes()  # samples.png is the latest

    info = history.samples_info(run)
    assert info["rows"] == ["input", "reconstruction", "|difference|"] and len(info["slices"]) == trainer.N_SAMPLES
    # Every sample slice holds plenty of brain (they used to be spread over every slice, the lowest included).
    config = json.loads((run / "config.json").read_text())
    store = SliceStore(store_dir(cohort, TrainConfig(model="autoencoder", data=str(cohort), **TINY).preprocess))
    val = SliceDataset(store, config["split"]["cases"]["val"], healthy_only=True)
    brain = {(r.case_id, r.slice_index): r.brain_pixels for r in val.table.itertuples()}
    assert all(brain[(s["case_id"], s["slice_index"])] >= trainer.SAMPLE_MIN_BRAIN * max(brain.values()) for s in info["slices"])
    assert len({s["slice_index"] for s in info["slices"]}) == trainer.N_SAMPLES  # four different slices


def test_sample_rows_skip_slices_with_little_brain():
    """On a set whose first and last slices hold little brain, no sample is one of them."""
    import pandas as pd

    from uad.training import trainer

    class Fake:
        def __init__(self, brain):
            self.table = pd.DataFrame({"brain_pixels": brain})

        def __len__(self):
            return len(self.table)

    brain = [50, 200, 900, 1500, 2000, 2100, 2000, 1600, 1000, 300, 40]
    ds, rows = trainer._sample_rows(Fake(brain), Fake([]))
    assert len(rows) == trainer.N_SAMPLES and all(brain[i] >= 0.6 * max(brain) for i in rows), rows


# -- readers ---------------------------------------------------------------------------------------------------
def test_partial_epoch_rule_on_records():
    lines = [
        {"epoch": 1, "train": {"loss": 1.0}, "val_loss": 0.9, "partial": False},
        {"epoch": 2, "train": {"loss": 0.8}, "val_loss": 0.7, "partial": True, "batches": [3, 10]},
        {"epoch": 2, "train": {"loss": 0.7}, "val_loss": 0.6, "partial": False},
        {"epoch": 3, "train": {"loss": 0.6}, "val_loss": 0.5, "partial": True, "batches": [5, 10]},
    ]
    steps = [{"epoch": p, "train": {"loss": 1.0 - p / 10}} for p in (0.5, 1.0, 1.1, 1.2, 1.3, 1.1, 1.5, 2.0, 2.5)]
    h = history.history(lines, steps)
    assert [(r.epoch, r.partial) for r in h.epochs] == [(1, False), (2, False), (3, True)]
    assert h.epochs[-1].position == pytest.approx(2.5)  # a partial epoch stays where it stopped
    assert [r.position for r in h.steps] == [0.5, 1.0, 1.1, 1.5, 2.0, 2.5]
    assert h.best_val_loss == 0.6  # a partial epoch's validation loss is not a finished epoch's


@pytest.mark.parametrize("line", [
    "not json", "[1, 2]", "5", '{"epoch": "3"}', '{"epoch": true}', '{"epoch": 0}', '{"epoch": -1}',
])
def test_readers_skip_lines_that_are_not_records(tmp_path, line):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train": {"loss": 0.5}, "val_loss": 0.4}) + "\n" + line + "\n")
    (run / folders.STEPS).write_text(line + "\n" + json.dumps({"epoch": 0.5, "step": 3, "train": {"loss": 0.6}}) + "\n")
    h = history.read_history(run)
    assert [r.epoch for r in h.epochs] == [1] and [r.position for r in h.steps] == [0.5]


def test_readers_check_each_field_and_accept_old_runs(tmp_path):
    """A field of the wrong type is left out (never an error); a run written before a field existed lacks it."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {"epoch": 1, "train": {"loss": 0.5, "adv": "high", "kl": None}, "val_loss": "n/a", "slices_per_s": 120.0},  # old
        {"epoch": 2, "train": "x", "val_loss": 0.3, "lr": {"model": 1e-4, "bad": [1]}, "gpu_memory_mb": 512.0,
         "slices_per_s": True, "partial": "yes"},
        {"epoch": 3, "train": {"loss": 0.2}, "lr": 3e-4},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    h = history.read_history(run)
    one, two, three = h.epochs
    assert one.train == {"loss": 0.5} and one.val_loss is None and one.lr == {} and one.slices_per_s == 120.0
    assert two.train == {} and two.lr == {"model": 1e-4} and two.gpu_memory_mb == 512.0 and two.slices_per_s is None
    assert two.partial is False and three.lr == {"lr": 3e-4}
    assert h.lr_keys == ["model", "lr"] and h.has_gpu_memory and h.main_loss == "loss"
    assert history.read_history(tmp_path / "nothing-here").epochs == []


def test_ema_is_tensorboards_debiased_smoothing():
    assert history.ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    out = history.ema([1.0, None, 3.0, float("nan")], 0.5)
    assert out[0] == 1.0 and out[1] is None and out[3] is None
    assert out[2] == pytest.approx((0.5 * 0.5 * 1.0 + 0.5 * 3.0) / (1 - 0.25))  # debiased: not pulled towards 0
    assert history.ema([2.0] * 50, 0.99) == pytest.approx([2.0] * 50)  # a constant stays constant
    with pytest.raises(ValueError):
        history.ema([1.0], 1.0)


def test_sample_pictures_stay_bounded_and_spread(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for epoch in range(1, 121):
        history.save_samples(run, epoch, b"png-bytes-%d" % epoch, {"slices": [], "rows": ["input"]})
    kept = [e for e, _ in history.samples_by_epoch(run)]
    assert len(kept) == history.SAMPLE_EPOCHS_KEPT and kept[0] == 1 and kept[-1] == 120
    gaps = np.diff(kept)
    assert gaps.max() <= 2 * math.ceil(119 / (history.SAMPLE_EPOCHS_KEPT - 1)), kept  # about evenly spread
    assert json.loads((run / folders.SAMPLES_INFO).read_text())["epoch"] == 120


def test_legacy_single_sample_picture_is_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / folders.SAMPLES).write_bytes(b"png")
    (run / folders.SAMPLES_INFO).write_text(json.dumps({"epoch": 7, "slices": 4, "rows": ["input", 3]}))
    assert history.samples_by_epoch(run) == [(7, run / folders.SAMPLES)]
    assert history.samples_info(run) == {}  # an old "slices" count and a bad row name are not shown


def test_monitor_figures_draw_what_the_history_holds():
    """Partial epochs hollow where they stopped, a GPU-memory panel only when recorded, names as text."""
    from uad.evaluation import figures

    lines = [{"epoch": 1, "train": {"loss": 0.5}, "val_loss": 0.4, "slices_per_s": 100.0, "lr": {"model": 1e-4},
              "gpu_memory_mb": 900.0},
             {"epoch": 2, "train": {"loss": 0.4}, "val_loss": 0.35, "slices_per_s": 110.0, "lr": {"model": 1e-4},
              "gpu_memory_mb": 910.0, "partial": True, "batches": [5, 10]}]
    h = history.history(lines, [])
    loss = figures.loss_figure(h, title="Loss · <b>run</b>")
    val = next(t for t in loss.data if t.name == "validation loss")
    assert list(val.x) == [1.0, 1.5] and list(val.marker.symbol) == ["circle", "circle-open"]
    assert loss.layout.title.text == "Loss · &lt;b&gt;run&lt;/b&gt;"  # plotly would read the tags
    rates = figures.rates_figure(h)
    assert [t.name for t in rates.data] == ["learning rate", "training slices/s", "peak GPU memory (MB)"]
    no_gpu = figures.rates_figure(history.history([{k: v for k, v in r.items() if k != "gpu_memory_mb"} for r in lines], []))
    assert [t.name for t in no_gpu.data] == ["learning rate", "training slices/s"]
