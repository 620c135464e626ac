"""Checkpoints: ``model.safetensors`` + ``checkpoint.json``, committed as a whole folder, never unpickled.

A checkpoint folder holds the model weights (safetensors) and a JSON description with everything
needed to rebuild and trust them: model name and hyper-parameters, preprocessing, data fingerprint,
split, training settings, epoch, validation loss, the weights' SHA-256 and package versions. A trainer's
``last/`` also holds the optimizer state (``training_state.safetensors`` + ``training_state.json``).
The folder is written beside its target and swapped in by rename (``fileio.write_folder``), so weights,
description and optimizer state always belong to the same save, whenever the writer is killed.
``load`` accepts a checkpoint folder or a run folder (it then takes ``best/``, else ``last/``).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from uad import __version__
from uad.checkpoints.record import (
    FORMAT_VERSION,
    META,
    TRAINING_META,
    TRAINING_STATE,
    WEIGHTS,
    CheckpointRecord,
    _recover,
    check_compatible,
)
from uad.core import fileio
from uad.core.errors import CheckpointError, ConfigError
from uad.models import AnomalyModel, canonical_name, create_model, recorded_hparams

log = logging.getLogger("uad.checkpoints")

MAX_WEIGHTS_BYTES = 4 * 1024**3  # far above any model the declared option bounds allow at a sane size


@dataclass
class Checkpoint:
    model: AnomalyModel
    record: CheckpointRecord
    path: Path

    @property
    def preprocess(self):
        if self.record.preprocess is None:
            raise CheckpointError(self.path / META, "records no preprocessing settings, so data cannot be prepared for it")
        return self.record.preprocess

    @property
    def info(self) -> dict[str, Any]:
        """The record as a plain dict (checked, as ``checkpoint.json`` stores it), e.g. to save it again."""
        return self.record.to_dict()


def versions() -> dict[str, str]:
    import numpy

    return {"uad": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


def save(folder: str | Path, model: AnomalyModel, info: dict[str, Any], dtype: torch.dtype | None = None,
         optimizers: dict[str, torch.optim.Optimizer] | None = None, training_state: dict[str, Any] | None = None) -> Path:
    """Commit ``folder`` whole: ``model.safetensors``, optionally the optimizer state, then ``checkpoint.json``.

    ``info`` carries preprocessing, data, split, training and epoch fields; model name, hyper-parameters,
    weight hash and versions are added here. ``dtype=torch.float16`` stores floating weights in half
    precision (for shipping); they are cast back to float32 on load. With ``optimizers``, their state and
    the torch RNG state are saved too, with ``training_state`` (epoch, step, best loss) beside them, for
    ``load_training_state``.
    """
    folder = Path(folder)
    state = {}
    for key, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        state[key] = t.contiguous()
    blob = st_save(state)
    files = {WEIGHTS: blob}
    if optimizers is not None:
        tensors, opt_meta = _optimizer_tensors(optimizers)
        tensors["rng/torch"] = torch.get_rng_state()
        files[TRAINING_STATE] = st_save(tensors)
        files[TRAINING_META] = fileio.json_bytes({"optimizers": opt_meta, **(training_state or {})})
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "hparams": dict(model.hparams),
        **{k: v for k, v in info.items() if k != "record_sha256"},
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_dtype": str(dtype or torch.float32).replace("torch.", ""),
        "versions": versions(),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    # Through the reader's checks, so nothing is written that would be refused when read; then sealed
    # with its own hash (record_sha256).
    try:
        record = CheckpointRecord.from_dict(fileio.json_safe(meta), folder)
    except CheckpointError as exc:
        raise ValueError(f"refusing to save a checkpoint whose record would not load: {exc}") from None
    files[META] = fileio.json_bytes(record.sealed())  # last: a folder with a readable description is complete
    return fileio.write_folder(folder, files)


def _optimizer_tensors(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        meta[name] = {"param_groups": sd["param_groups"], "scalars": {}}
        for pid, state in sd["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"{name}/{pid}/{key}"] = value.detach().cpu().contiguous()
                else:
                    meta[name]["scalars"][f"{pid}/{key}"] = value
    return tensors, meta


def _restore_optimizers(optimizers, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    for name, opt in optimizers.items():
        if name not in meta:
            continue
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            opt_name, pid, k = key.split("/", 2)
            if opt_name == name:
                state.setdefault(int(pid), {})[k] = value
        for key, value in meta[name]["scalars"].items():
            pid, k = key.split("/", 1)
            state.setdefault(int(pid), {})[k] = value
        opt.load_state_dict({"state": state, "param_groups": meta[name]["param_groups"]})


def load_training_state(folder: str | Path, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore ``optimizers`` and the torch RNG from a checkpoint saved with them; returns its
    ``training_state`` fields (epoch, step, best_val_loss)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    _recover(folder)
    try:
        tensors = load_file(str(folder / TRAINING_STATE))
        meta = fileio.read_json(folder / TRAINING_META)
        _restore_optimizers(optimizers, {k: v for k, v in tensors.items() if not k.startswith("rng/")}, meta["optimizers"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise CheckpointError(folder, f"cannot resume: training state unreadable ({exc})") from None
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
    return meta


def load(path: str | Path, expect_model: str | None = None, preprocess=None, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint (or run) folder, in eval mode.

    Refuses, with a CheckpointError naming the file: missing or corrupt files, weights whose hash does not
    match, weights of another architecture, a model other than ``expect_model``, and a checkpoint whose
    channels or image size disagree with ``preprocess`` (a PreprocessConfig).
    """
    record = CheckpointRecord.read(path)
    folder = record.folder
    try:
        name = canonical_name(record.model)
        # The same declared types and bounds as training (the model's constructor signature), before anything
        # is built: a hostile record must not buy memory or minutes (e.g. test_time_drops: 1024). An option the
        # record predates takes the value it was trained with, not today's default.
        hparams = recorded_hparams(name, record.hparams)
    except ConfigError as exc:
        raise CheckpointError(folder / META, str(exc)) from None
    if not record.verified:
        log.warning("%s: written by an older uad without a record hash: its fields were checked, but an edit to "
                    "them cannot be detected", folder / META)
    if expect_model is not None and canonical_name(expect_model) != name:
        raise CheckpointError(folder, f"is a {name} checkpoint, not {canonical_name(expect_model)}")
    if preprocess is not None:
        check_compatible(record, preprocess, folder)
    weights = folder / WEIGHTS
    try:
        if weights.stat().st_size > MAX_WEIGHTS_BYTES:
            raise CheckpointError(weights, f"{weights.stat().st_size:,} bytes: larger than any model uad builds")
        blob = weights.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(weights, "weights file is missing") from None
    except OSError as exc:  # e.g. a folder where the file should be, or no permission
        raise CheckpointError(weights, f"weights file unreadable ({exc.strerror or exc})") from None
    if hashlib.sha256(blob).hexdigest() != record.weights_sha256:
        raise CheckpointError(weights, "weights file is corrupt or truncated (SHA-256 does not match checkpoint.json)")
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(weights, f"not a readable safetensors file ({exc})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(weights, f"weights contain NaN or infinite values (in {', '.join(bad[:3])}); "
                                       "the run that saved them diverged")
    # Built first without memory (meta device) and compared with the file, so only a model whose weights
    # are all in the file (and so bounded by its size) is ever allocated.
    with torch.device("meta"):
        skeleton = _build(name, hparams, folder)
    _check_fits(skeleton.state_dict(), state, weights, name)
    model = _build(name, hparams, folder)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.to(device).eval()
    return Checkpoint(model=model, record=record, path=folder)


def _build(name: str, hparams: dict[str, Any], folder: Path) -> AnomalyModel:
    try:
        return create_model(name, **hparams)
    except (TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(folder / META, f"cannot rebuild model {name} ({exc})") from None


def _check_fits(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], weights: Path, name: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = (missing and f"missing {missing[:3]}") or (unexpected and f"unexpected {unexpected[:3]}") or f"shape mismatch in {wrong[:3]}"
        raise CheckpointError(weights, f"weights do not fit model {name}: {detail}")

