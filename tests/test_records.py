"""checkpoint.json is read once, typed and checked (``CheckpointRecord``), and sealed with its own hash: an
edited record is refused like edited weights, a hostile one gives a clear error (never a traceback, never
minutes of scoring), an old one without the hash is accepted and says so (issue #17 H, issue #16 item 5)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pytest
import torch

from uad import cli
from uad.checkpoints import record as ckpt_record
from uad.checkpoints import weights as ckpt_weights
from uad.checkpoints.record import CheckpointRecord
from uad.core import fileio
from uad.core.errors import CheckpointError
from uad.data.preprocess_config import PreprocessConfig
from uad.models import create_model
from uad.runs import listing

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.parent for p in (REPO / "checkpoints").glob("**/best/checkpoint.json"))


def _save(folder: Path, model: str = "autoencoder", **hparams) -> Path:
    torch.manual_seed(0)
    m = create_model(model, image_size=64, **hparams)
    info = {"preprocess": PreprocessConfig(image_size=64).to_dict(), "epoch": 1,
            "split": {"ratios": [0.7, 0.1, 0.2], "seed": 0, "cases": {"train": ["a"], "val": ["b"], "test": ["c"]}},
            "data": {"root": "/data/x", "demo": False, "cases": {"a": [{"file": "a/a_flair.nii.gz", "bytes": 10}]}}}
    return ckpt_weights.save(folder, m, info)


def _edit(folder: Path, reseal: bool, **changes) -> None:
    """Change top-level fields of the record; ``reseal``: compute its hash again, as someone who knows the
    format could (then only the checks of the fields stand in the way)."""
    path = folder / ckpt_record.META
    raw = json.loads(path.read_text())
    body = {k: v for k, v in raw.items() if k != "record_sha256"}
    body.update(changes)
    if reseal:
        body["record_sha256"] = ckpt_record.canonical_hash(body)
    else:
        body["record_sha256"] = raw["record_sha256"]
    path.write_text(json.dumps(body))


def test_a_saved_record_is_sealed_and_reads_typed(tmp_path):
    folder = _save(tmp_path / "ckpt")
    record = CheckpointRecord.read(tmp_path / "ckpt" / "checkpoint.json")
    assert record.verified and len(record.record_sha256) == 64 and record.folder == folder
    assert record.model == "autoencoder" and record.epoch == 1 and record.preprocess.image_size == 64
    assert record.split.cases == {"train": ("a",), "val": ("b",), "test": ("c",)}
    assert record.data.cases["a"][0].bytes == 10 and record.trained_root == Path("/data/x")
    assert ckpt_weights.load(folder).record == record


@pytest.mark.parametrize("field, value", [("epoch", 2), ("val_loss", 0.5), ("hparams", {"base_channels": 8}),
                                          ("data", {"root": "/elsewhere", "demo": False, "cases": {}})])
def test_an_edited_record_is_refused_like_edited_weights(tmp_path, field, value):
    folder = _save(tmp_path / "ckpt")
    _edit(folder, reseal=False, **{field: value})
    with pytest.raises(CheckpointError, match="checkpoint.json: the record was changed after it was saved"):
        CheckpointRecord.read(folder)
    with pytest.raises(CheckpointError, match="changed after it was saved"):
        ckpt_weights.load(folder)


def test_test_time_drops_1024_cannot_make_scoring_run_for_minutes(tmp_path, capsys):
    folder = _save(tmp_path / "vit", "vit", patch_size=16, embed_dim=32, depth=1, num_heads=2)
    hparams = json.loads((folder / "checkpoint.json").read_text())["hparams"]
    _edit(folder, reseal=True, hparams={**hparams, "test_time_drops": 1024})
    t0 = time.perf_counter()
    assert cli.main(["score", "--run", str(folder), "--case", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "test_time_drops must be between 0 and 16, got 1024" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("changes, expected", [
    ({"model": ["x"]}, "model must be a model name"),
    ({"model": "nosuchmodel"}, "unknown model 'nosuchmodel'"),
    ({"preprocess": "x"}, "preprocess: preprocessing settings must be a JSON object"),
    ({"preprocess": {"image_size": "64"}}, "image size must be a whole number"),
    ({"preprocess": {"modalities": ["flair", "flair"], "image_size": 64}}, "modality listed twice"),
    ({"hparams": {"latent_dim": {"a": 1}}}, "latent_dim must be a whole number"),
    ({"hparams": {"image_size": 128}}, "disagree with preprocess"),
    ({"epoch": -1}, "epoch must be a whole number between 0"),
    ({"val_loss": "low"}, "val_loss must be a finite number or null"),
    ({"weights_dtype": "int8"}, "weights_dtype must be one of"),
    ({"weights_sha256": "abc"}, "weights_sha256 must be 64 hex digits"),
    ({"split": {"cases": {"train": ["a"], "test": ["a"]}}}, "case a is in both the train and the test list"),
    ({"split": {"cases": {"train": ["../../etc"]}}}, "is not a case id"),
    ({"data": {"root": 5}}, "data root must be a folder name"),
    ({"data": {"cases": {"a": [{"file": "x", "bytes": -1}]}}}, "a file must have a name and a size"),
    ({"training_data": {"name": ["x"]}}, "training_data must be a JSON object of short texts"),
    ({"train": [1, 2]}, "train must be a JSON object"),
    ({"format_version": 2}, "format_version must be a whole number between 1 and 1"),
])
def test_hostile_fields_give_a_clear_error_naming_the_file(tmp_path, capsys, changes, expected):
    folder = _save(tmp_path / "ckpt")
    _edit(folder, reseal=True, **changes)
    with pytest.raises(CheckpointError, match=expected) as info:
        ckpt_weights.load(folder)
    assert str(info.value).startswith(str(folder))
    assert cli.main(["evaluate", "--run", str(folder), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_a_folder_named_model_safetensors_is_a_clear_error(tmp_path):
    folder = _save(tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors: weights file unreadable"):
        ckpt_weights.load(folder)


def test_a_record_without_its_hash_is_accepted_and_says_so(tmp_path, caplog):
    folder = _save(tmp_path / "ckpt")
    raw = json.loads((folder / "checkpoint.json").read_text())
    raw.pop("record_sha256")
    (folder / "checkpoint.json").write_text(json.dumps(raw))
    assert not CheckpointRecord.read(folder).verified
    with caplog.at_level(logging.WARNING, logger="uad.checkpoints"):
        ckpt_weights.load(folder)
    assert "without a record hash" in caplog.text
    raw["hparams"]["latent_dim"] = 100_000  # still checked field by field
    (folder / "checkpoint.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="latent_dim must be between 1 and 4096"):
        ckpt_weights.load(folder)


def test_null_fields_read_as_absent_ones_with_their_defaults(tmp_path):
    """An explicit null reads as an absent field (one rule for every record, ``uad.core.fields``): the split's seed
    and the format version take their defaults; they were once read as None, breaking the record's types."""
    folder = _save(tmp_path / "ckpt")
    _edit(folder, reseal=True, format_version=None,
          split={"ratios": [0.7, 0.1, 0.2], "seed": None, "cases": {"train": ["a"], "val": ["b"], "test": ["c"]}})
    record = CheckpointRecord.read(folder / "checkpoint.json")
    assert record.split.seed == 0 and record.format_version == ckpt_record.FORMAT_VERSION


def test_saving_a_record_that_would_not_load_is_refused(tmp_path):
    m = create_model("autoencoder", image_size=64)
    with pytest.raises(ValueError, match="would not load"):
        ckpt_weights.save(tmp_path / "bad", m, {"epoch": "one"})
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints in this checkout")
def test_shipped_records_are_sealed_and_name_no_build_machine(tmp_path):
    assert len(SHIPPED) == 10
    for folder in SHIPPED:
        record = CheckpointRecord.read(folder)
        assert record.verified, folder
        weights = (folder / "model.safetensors").read_bytes()
        assert hashlib.sha256(weights).hexdigest() == record.weights_sha256
        root = record.data.root
        assert root in ("data/demo", "../shared/data/real_dev"), (folder, root)
        assert all(not f.file.startswith(("/", "..", root)) for files in record.data.cases.values() for f in files), folder


def test_a_run_with_a_hostile_record_is_listed_without_it(tmp_path, capsys):
    from uad.core import paths

    run = paths.runs_dir() / "20250101-000000-autoencoder"
    folder = _save(run / "best")
    fileio.write_json(run / "config.json", {"model": "autoencoder", "train": {"epochs": 1}})
    _edit(folder, reseal=False, epoch=5)
    (info,) = listing.list_runs(include_shipped=False)
    assert info.checkpoint is None and info.trained_root is None and info.training_data["name"]
    assert cli.main(["runs", "list"]) == 0
    assert run.name in capsys.readouterr().out
