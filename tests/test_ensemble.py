"""Ensembles: trained runs combined into one run that evaluates, compares and reports like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.test_evaluate import trained  # noqa: F401  (module-scoped fixture: a tiny trained autoencoder run)
from uad.checkpoints import weights
from uad.cli import main as cli
from uad.core.errors import ConfigError
from uad.evaluation import summaries
from uad.evaluation.ensembles import create_ensemble
from uad.evaluation.evaluate import evaluate, run_calibration
from uad.scoring.recipe import ScoringRecipe
from uad.training.config import TrainConfig
from uad.training.trainer import train


@pytest.fixture(scope="module")
def second(trained, tmp_path_factory):  # noqa: F811
    """A second run on the same data and split (another model), for an ensemble of two."""
    root, run = trained
    home = tmp_path_factory.mktemp("home2")
    mp = pytest.MonkeyPatch()
    mp.setenv("UAD_HOME", str(home))
    cfg = json.loads((run / "config.json").read_text())["train"]
    out = train(TrainConfig(model="vae", data=str(root), image_size=64, epochs=1, batch_size=8, cases=cfg["cases"]
                            if cfg.get("cases") else None), run_dir=home / "vae", progress=False)
    mp.undo()
    return out


def test_an_ensemble_is_the_mean_of_its_members_maps_each_on_its_own_scale(trained, second, tmp_path):  # noqa: F811
    root, run = trained
    ens = create_ensemble([run, second], tmp_path / "ens")
    a, b, e = (weights.load(p) for p in (run, second, ens))
    scales = [run_calibration(p, c, ScoringRecipe())[c.model.name].threshold(0.01) for p, c in ((run, a), (second, b))]
    x = torch.rand(3, 1, 64, 64)
    floor = min(scales)  # keeps the mean in [0, 1], where the pixel metrics' histograms are
    want = (a.model.anomaly_map(x).anomaly_map / scales[0] + b.model.anomaly_map(x).anomaly_map / scales[1]) / 2 * floor
    got = e.model.anomaly_map(x).anomaly_map
    assert torch.allclose(got, want, atol=1e-6)
    assert got.min() >= 0 and got.max() <= max(a.model.anomaly_map(x).anomaly_map.max(), b.model.anomaly_map(x).anomaly_map.max())
    assert json.loads((ens / "status.json").read_text())["state"] == "completed"


def test_an_ensemble_evaluates_compares_and_reports_like_a_run(trained, second, tmp_path, capsys):  # noqa: F811
    root, run = trained
    ens = tmp_path / "ens"
    assert cli(["ensemble", "--runs", str(run), str(second), "--out", str(ens)]) == 0
    m = evaluate(ens, data=root, out=tmp_path / "ev", n_boot=20, progress=False)
    s = summaries.EvaluationSummary.read(tmp_path / "ev")
    assert s.model == "ensemble" and np.isfinite(m["pixel_ap"]) and s.weights_sha256
    evaluate(run, data=root, n_boot=20, progress=False)
    assert cli(["evaluate", "--run", str(ens), "--data", str(root), "--bootstrap", "20"]) == 0
    capsys.readouterr()
    assert cli(["compare", str(run), str(ens)]) == 0
    out = capsys.readouterr().out
    # The ensemble against its member, whichever has the higher pixel AP is B; one test patient here.
    assert ("paired differences, ens (A) - run (B)" in out or "paired differences, run (A) - ens (B)" in out) \
        and "too few to tell" in out
    assert cli(["report", "--run", str(ens), "--out", str(tmp_path / "r.html")]) == 0
    assert "Paired differences" in (tmp_path / "r.html").read_text()


def test_members_must_read_the_same_data(trained, tmp_path, make_cohort):  # noqa: F811
    root, run = trained
    other_root = make_cohort(4, root=tmp_path / "other")
    other = train(TrainConfig(model="vae", data=str(other_root), image_size=64, epochs=1, batch_size=8),
                  run_dir=tmp_path / "other_run", progress=False)
    with pytest.raises(ConfigError, match="share their"):
        create_ensemble([run, other], tmp_path / "ens")
