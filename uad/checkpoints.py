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
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from uad import __version__, fileio
from uad.errors import CheckpointError, ConfigError
from uad.models import AnomalyModel, canonical_name, create_model

log = logging.getLogger("uad.checkpoints")

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
TRAINING_STATE = "training_state.safetensors"
TRAINING_META = "training_state.json"

# Upper bounds on hyper-parameters that size the model: checkpoint.json decides how much memory building
# the model takes, so a damaged or hostile one must not get that far. Far above any sensible setting.
HPARAM_BOUNDS = {
    "in_channels": 64, "image_size": 512, "latent_dim": 65536, "base_channels": 4096, "embed_dim": 4096,
    "depth": 64, "num_heads": 256, "patch_size": 512, "mlp_ratio": 64, "noise_res": 512,
    "inpaint_groups": 4096, "test_time_drops": 1024, "n_critic": 1000,
}


@dataclass
class Checkpoint:
    model: AnomalyModel
    info: dict[str, Any]
    path: Path

    @property
    def preprocess(self):
        from uad.data.preprocess import PreprocessConfig

        return PreprocessConfig.from_dict(self.info["preprocess"])


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
        **info,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_dtype": str(dtype or torch.float32).replace("torch.", ""),
        "versions": versions(),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    files[META] = fileio.json_bytes(meta)  # last: a folder with a readable description is complete
    return fileio.write_folder(folder, files)


def _complete(folder: Path) -> bool:
    try:
        return isinstance(fileio.read_json(folder / META), dict)
    except (OSError, ValueError):
        return False


def _recover(folder: Path) -> None:
    """Put back a checkpoint folder whose writer was killed between moving the old one aside and renaming
    the new one in (see ``fileio.write_folder``)."""
    if folder.exists() or folder.name == META:
        return
    if fileio.recover_folder(folder, _complete):
        log.warning("%s: recovered after an interrupted save", folder)


# -- optimizer state (safetensors holds tensors only, so it is flattened) --------------------------------
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


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, its checkpoint.json, or a run folder."""
    path = Path(path)
    if path.name == META:
        path = path.parent
    _recover(path)
    if (path / META).is_file():
        return path
    for sub in ("best", "last"):
        _recover(path / sub)
        if (path / sub / META).is_file():
            return path / sub
    if not path.exists():
        raise CheckpointError(path, "no such run or checkpoint folder")
    raise CheckpointError(path, f"no checkpoint here (expected {META} in it, or in best/ or last/)")


def read_info(path: str | Path) -> dict[str, Any]:
    folder = resolve(path)
    try:
        info = fileio.read_json(folder / META)
    except ValueError as exc:
        raise CheckpointError(folder / META, f"corrupt checkpoint description ({exc})") from None
    if not isinstance(info, dict) or "model" not in info or "hparams" not in info:
        raise CheckpointError(folder / META, "not a uad checkpoint description (no model or hparams)")
    return info


def load(path: str | Path, expect_model: str | None = None, preprocess=None, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint (or run) folder, in eval mode.

    Refuses, with a CheckpointError naming the file: missing or corrupt files, weights whose hash does not
    match, weights of another architecture, a model other than ``expect_model``, and a checkpoint whose
    channels or image size disagree with ``preprocess`` (a PreprocessConfig).
    """
    folder = resolve(path)
    info = read_info(folder)
    name = info["model"]
    if expect_model is not None and canonical_name(expect_model) != canonical_name(name):
        raise CheckpointError(folder, f"is a {name} checkpoint, not {canonical_name(expect_model)}")
    if preprocess is not None:
        check_compatible(info, preprocess, folder)
    weights = folder / WEIGHTS
    try:
        blob = weights.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(weights, "weights file is missing") from None
    if info.get("weights_sha256") and hashlib.sha256(blob).hexdigest() != info["weights_sha256"]:
        raise CheckpointError(weights, "weights file is corrupt or truncated (SHA-256 does not match checkpoint.json)")
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(weights, f"not a readable safetensors file ({exc})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(weights, f"weights contain NaN or infinite values (in {', '.join(bad[:3])}); "
                                       "the run that saved them diverged")
    check_hparams(info["hparams"], folder / META)
    # Built first without memory (meta device) and compared with the file, so only a model whose weights
    # are all in the file (and so bounded by its size) is ever allocated.
    with torch.device("meta"):
        skeleton = _build(name, info["hparams"], folder)
    _check_fits(skeleton.state_dict(), state, weights, name)
    model = _build(name, info["hparams"], folder)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.to(device).eval()
    return Checkpoint(model=model, info=info, path=folder)


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


def check_hparams(hparams: Any, where: Path | str = "") -> None:
    """Refuse hyper-parameters outside ``HPARAM_BOUNDS`` (or not numbers where sizes are expected)."""
    if not isinstance(hparams, dict):
        raise CheckpointError(where, "hparams is not a JSON object")
    for key, limit in HPARAM_BOUNDS.items():
        if key not in hparams:
            continue
        value = hparams[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(where, f"hparams {key} must be a number, got {value!r}")
        if not 0 <= value <= limit:
            raise CheckpointError(where, f"hparams {key} = {value} is outside the sane range 0..{limit}")


def check_compatible(info: dict[str, Any], preprocess, where: Path | str = "") -> None:
    """Raise if the checkpoint was trained on other channels or another image size than ``preprocess``."""
    trained = info.get("preprocess", {})
    mods = list(trained.get("modalities", []))
    if mods and mods != list(preprocess.modalities):
        raise CheckpointError(where, f"trained on modalities {' '.join(mods)}, but the data asks for {' '.join(preprocess.modalities)}")
    size = trained.get("image_size")
    if size and int(size) != preprocess.image_size:
        raise CheckpointError(where, f"trained at image size {size}, but the data asks for {preprocess.image_size}")
