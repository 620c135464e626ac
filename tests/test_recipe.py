"""One scoring recipe, recorded by every evaluation and read by everything that shows its numbers."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import pandas as pd
import pytest

from tests.test_evaluate import trained  # noqa: F401  (module-scoped fixture: a tiny trained run)
from uad.core.errors import ConfigError
from uad.evaluation import summaries
from uad.evaluation.evaluate import evaluate
from uad.scoring.recipe import (
    FPR_RATES,
    RESIDUALS,
    Calibration,
    PostprocessConfig,
    ScoringRecipe,
)


def test_recipes_are_hashable_values_that_round_trip_and_refuse_bad_fields():
    r = ScoringRecipe("abs", PostprocessConfig(median_3d=True, min_component=20))
    assert ScoringRecipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert hash(r) == hash(ScoringRecipe.from_dict(r.to_dict())) and r.key == ScoringRecipe.from_dict(r.to_dict()).key
    assert r.key != ScoringRecipe().key
    for bad in ({"median_size": -3}, {"median_size": 4}, {"erode_brain": 1.5}, {"min_component": True},
                {"score_percentile": float("nan")}, {"slice_score": "mean"}, {"unknown": 1}):
        with pytest.raises(ConfigError):
            PostprocessConfig.from_dict({**PostprocessConfig().to_dict(), **bad})
    with pytest.raises(ConfigError):
        ScoringRecipe.from_dict({"residual": "square", "postprocess": {}})


def test_the_recipe_knows_the_residuals_the_models_declare():
    from uad.models.base import Residual

    assert RESIDUALS == get_args(Residual)


def test_an_evaluation_records_its_recipe_calibration_and_weights(trained, tmp_path):  # noqa: F811
    root, run = trained
    recipe = ScoringRecipe(post=PostprocessConfig(median_3d=True, min_component=20))
    evaluate(run, data=root, out=tmp_path / "ev", recipe=recipe, n_boot=0, progress=False)
    s = summaries.EvaluationSummary.read(tmp_path / "ev")
    assert s.recipe == recipe.for_model("positive") and s.recipe.post.median_3d and s.recipe.post.min_component == 20
    cal = s.calibration
    assert isinstance(cal, Calibration) and [t.rate for t in cal.thresholds] == list(FPR_RATES)
    assert cal.cases == tuple(s.raw["calibration_cases"]) and cal.source == "run"
    info = json.loads((run / "best" / "checkpoint.json").read_text())
    assert s.weights_sha256 == info["weights_sha256"] and s.checkpoint_epoch == info["epoch"]
    assert s.staleness(info["weights_sha256"]) is None and "changed" in s.staleness("0" * 64)
    # the run's own calibration is kept for this recipe, for other folders
    assert summaries.read_calibrations(summaries.calibration_file(run, s.recipe))["autoencoder"].thresholds == cal.thresholds


def test_explore_dice_at_each_preset_equals_the_evaluations_case_table(trained, tmp_path):  # noqa: F811
    """Explore scores a case with the recipe of the evaluation whose presets it shows (here 3-D median and a
    minimum component size) and computes its per-volume Dice with uad.scoring.view: equal to cases.csv."""
    from uad.checkpoints import weights
    from uad.data.store import load_working_case
    from uad.evaluation.columns import dice_key
    from uad.scoring import view
    from uad.scoring.maps import score_case
    from uad.scoring.scorers import ModelScorer

    root, run = trained
    recipe = ScoringRecipe(post=PostprocessConfig(median_3d=True, min_component=20))
    evaluate(run, data=root, out=tmp_path / "ev", recipe=recipe, n_boot=0, progress=False)
    s = summaries.EvaluationSummary.read(tmp_path / "ev")
    cases = pd.read_csv(tmp_path / "ev" / "cases.csv")
    ckpt = weights.load(run)
    checked = 0
    for _, row in cases[cases.labelled].iterrows():
        case = load_working_case(root, row.case_id, ckpt.preprocess)  # as Explore loads it
        vs = score_case(ModelScorer(ckpt.model), case, s.recipe)  # with the evaluation's recipe
        assert vs.recipe == s.recipe
        for rate, thr in s.presets():
            expected = row[dice_key(rate)]
            got = view.volume_counts(vs, case, thr).dice
            if np.isnan(expected):
                assert np.isnan(got)
            else:
                assert got == pytest.approx(expected, abs=0.005), (row.case_id, rate)
                checked += 1
    assert checked >= 3
    # and the default recipe does give other numbers here: the test can tell the recipes apart
    vs_default = score_case(ModelScorer(ckpt.model), case, ScoringRecipe())
    assert not np.array_equal(vs_default.maps, vs.maps)
