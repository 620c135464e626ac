"""Ensembles as a method: several runs scored on the same data, combined into one run folder.

``create_ensemble`` loads the member runs, checks that they read the same data the same way (channels,
working size, training data and recorded patient split), takes each member's own calibrated threshold at
``rate`` healthy FPR on its validation patients as its scale, and saves an ``ensemble`` checkpoint (every
member's weights in one ``model.safetensors``) in a run folder. From then on it is a run like any other:
``uad evaluate``, ``uad compare``, the app's Compare and Explore pages and the HTML report take it as it is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from uad.checkpoints import weights as ckpt_weights
from uad.core import fileio
from uad.core.errors import ConfigError
from uad.evaluation.evaluate import run_calibration
from uad.models import create_model
from uad.runs import folders
from uad.scoring.recipe import FPR_RATES, ScoringRecipe, rate_label

DEFAULT_RATE = 0.01  # each member's map is divided by the value 1 % of its healthy validation pixels reach


def _same(what: str, values: dict[str, Any]) -> Any:
    distinct = {repr(v) for v in values.values()}
    if len(distinct) > 1:
        raise ConfigError(f"ensemble members must share their {what}: " + "; ".join(f"{k}: {v}" for k, v in values.items()))
    return next(iter(values.values()))


def member_scales(runs: list[Path], checkpoints: list, recipe: ScoringRecipe, rate: float, device=None) -> list[float]:
    """Each member's threshold at ``rate`` healthy FPR, calibrated on its own validation patients with ``recipe``."""
    scales = []
    for run, ckpt in zip(runs, checkpoints):
        cal = run_calibration(run, ckpt, recipe, device=device)[ckpt.model.name]
        thr = cal.threshold(rate)
        if thr is None or not thr > 0:
            raise ConfigError(f"{run}: no positive threshold at {rate_label(rate)} healthy FPR to scale its map by")
        scales.append(float(thr))
    return scales


def build(checkpoints: list, scales: list[float]):
    """The ensemble model of loaded member checkpoints (their weights copied in)."""
    first = checkpoints[0].model
    members = [{"model": c.model.name, "hparams": dict(c.model.hparams)} for c in checkpoints]
    model = create_model("ensemble", in_channels=first.in_channels, image_size=first.image_size, members=members,
                         scales=scales)
    for net, c in zip(model.members, checkpoints):
        net.load_state_dict(c.model.state_dict())
    return model.eval()


def create_ensemble(runs: list[str | Path], out: str | Path, rate: float = DEFAULT_RATE,
                    recipe: ScoringRecipe = ScoringRecipe(), device: str | None = None) -> Path:
    """Combine trained runs into an ensemble run folder ``out`` (new or empty); returns it."""
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise ConfigError("an ensemble needs at least two runs")
    if rate not in FPR_RATES:
        raise ConfigError(f"the scale rate must be one of the calibrated rates {', '.join(map(str, FPR_RATES))}, got {rate}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: already exists and is not empty; choose a new folder for the ensemble")
    ckpts = [ckpt_weights.load(r, device=device) for r in runs]
    names = {str(r): r.name for r in runs}
    _same("input channels", {names[str(r)]: c.info.get("preprocess", {}).get("modalities") for r, c in zip(runs, ckpts)})
    _same("working size", {names[str(r)]: c.info.get("preprocess", {}).get("image_size") for r, c in zip(runs, ckpts)})
    _same("training data", {names[str(r)]: (c.info.get("data") or {}).get("root") for r, c in zip(runs, ckpts)})
    split = _same("recorded patient split", {names[str(r)]: (c.info.get("split") or {}).get("cases") for r, c in zip(runs, ckpts)})
    scales = member_scales(runs, ckpts, recipe, rate, device)
    model = build(ckpts, scales)
    first = ckpts[0].info
    ensemble = {"members": [{"run": str(r), "model": c.model.name, "weights_sha256": c.record.weights_sha256,
                             "scale": s} for r, c, s in zip(runs, ckpts, scales)],
                "scale_rate": rate, "recipe": recipe.to_dict()}
    info = {"preprocess": first.get("preprocess"), "data": first.get("data"), "split": first.get("split"),
            "train": {}, "epoch": 0, "ensemble": ensemble}
    out.mkdir(parents=True, exist_ok=True)
    ckpt_weights.save(out / "best", model, info)
    fileio.write_json(out / "config.json", {"model": "ensemble", "ensemble": ensemble, "data_root": (first.get("data") or {}).get("root"),
                                            "preprocess": first.get("preprocess"), "split": {"cases": split}})
    folders.write_status(out, "completed", model="ensemble", finished=time.time(), epoch=0, epochs=0,
                         end={"kind": "completed", "epochs_done": 0, "epochs": 0})
    return out
