"""A checkpoint's description (``checkpoint.json``), found and read without torch.

Checkpoints: ``model.safetensors`` + ``checkpoint.json``, committed as a whole folder, never unpickled.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from uad.core import fileio
from uad.core.errors import CheckpointError

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

