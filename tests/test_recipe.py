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


def _copy_cohort(src, dst, transform=None):
    """The same phantom cases in another folder; ``transform(volume) -> volume`` changes every modality."""
    import nibabel as nib

    for case in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / case.name).mkdir(parents=True)
        for f in case.iterdir():
            img = nib.load(str(f))
            data = np.asarray(img.dataobj)
            if transform is not None and "_seg" not in f.name:
                data = transform(data)
            nib.save(nib.Nifti1Image(data, img.affine), str(dst / case.name / f.name))


class _Smoother:
    """A stand-in "model" whose reconstruction is a 5×5 local mean of its input: a deterministic, meaningful
    positive residual (what is brighter than its surroundings), for tests that need stable maps."""

    @staticmethod
    def register():
        import torch.nn.functional as F

        from uad.models import registry
        from uad.models.base import AnomalyModel

        class Smoother(AnomalyModel):
            name = "smoother_for_tests"
            trainable = False

            def __init__(self, in_channels: int = 1, image_size: int = 64, residual: str = "positive"):
                super().__init__(in_channels, image_size, residual=residual)

            def reconstruct(self, x):
                return F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)

        if "smoother_for_tests" not in registry._REGISTRY:
            registry.register_model()(Smoother)


def _smoother_run(trained_run, out):
    """A run folder holding the smoother as its checkpoint, trained (recorded) on the same data and split."""
    from uad.checkpoints import weights
    from uad.models import create_model
    from uad.runs import folders

    _Smoother.register()
    info = weights.load(trained_run).info
    model = create_model("smoother_for_tests", in_channels=1, image_size=64)
    weights.save(out / "best", model, {k: info[k] for k in ("preprocess", "data", "split", "train")} | {"epoch": 1})
    folders.write_status(out, "completed", model="smoother_for_tests")
    return out


def test_drift_check_warns_when_the_score_scale_moves_not_when_tumours_are_present():
    from uad.evaluation import drift
    from uad.evaluation.metrics import PixelAccumulator

    rng = np.random.default_rng(0)
    healthy = np.clip(rng.gamma(2.0, 0.02, 200_000), 0, 1)
    cal = PixelAccumulator()
    cal.update_healthy(healthy)
    quantiles = [(q, cal.quantile(q, "neg")) for q in (0.75, 0.9, 0.99)]
    thresholds = [{"rate": 0.01, "threshold": cal.quantile(0.99, "neg")}]

    def folder(values):
        acc = PixelAccumulator()
        acc.update_healthy(np.clip(values, 0, 1))
        return drift.check(quantiles, acc, thresholds)

    other_patients = rng.gamma(2.0, 0.02, 150_000)
    tumour = rng.uniform(0.3, 0.9, 12_000)  # 7 % of the brain's pixels: a large glioma
    assert folder(np.concatenate([other_patients, tumour]))["warning"] is None
    assert "may not fit" in folder(other_patients * 2.5)["warning"]  # the same anatomy, maps 2.5x higher
    assert "may not fit" in folder(other_patients * 0.4)["warning"]  # or far lower: thresholds flag almost nothing
    assert folder(other_patients * 1.3)["warning"] is None  # a modest shift stays within the factor
    assert folder(other_patients * 2.5)["flagged"][0]["flagged"] > 0.2  # the 1 % threshold flags a fifth of the brain


def test_a_foreign_folder_gets_the_runs_thresholds_and_a_drift_warning_when_its_intensities_change(trained, tmp_path):  # noqa: F811
    """On another folder, evaluate applies the run's own calibration (what a new site without labels gets) and
    reports the healthy FPR reached there; the label-free drift check stays quiet on the same scans moved to a new
    folder, and warns when their intensities are rescaled as another scanner's contrast would (x ** 0.3: a global
    factor would be undone by the per-volume normalisation, and rightly raise nothing)."""
    root, trained_run = trained
    run = _smoother_run(trained_run, tmp_path / "smoother")
    same, biased = tmp_path / "same", tmp_path / "biased"
    _copy_cohort(root, same)

    def contrast(vol):
        top = float(vol.max())
        return np.where(vol > 0, (vol.astype(float) / top) ** 0.3 * top, 0).astype(vol.dtype)

    _copy_cohort(root, biased, contrast)
    home = summaries.EvaluationSummary.from_metrics(evaluate(run, data=root, n_boot=0, progress=False))
    m = evaluate(run, data=same, split="all", out=tmp_path / "ev_same", n_boot=0, progress=False)
    s = summaries.EvaluationSummary.from_metrics(m, tmp_path / "ev_same")
    assert m["split_source"] == "external" and s.calibration.source == "run"
    assert s.calibration.thresholds == home.calibration.thresholds  # the run's own thresholds, not re-calibrated
    assert s.calibration.cases == home.calibration.cases
    assert all(t["reached_fpr"] is not None for t in m["healthy_fpr_thresholds"])
    assert s.drift_warning is None, m["drift"]
    m = evaluate(run, data=biased, split="all", out=tmp_path / "ev_biased", n_boot=0, progress=False)
    s = summaries.EvaluationSummary.from_metrics(m, tmp_path / "ev_biased")
    assert s.drift_warning and "may not fit this folder" in s.drift_warning, m["drift"]
    from uad.evaluation import html_report

    report = html_report.build_report(summaries.EvaluationSummary.read(tmp_path / "ev_biased"), run, examples=False)
    assert "drift check" in report and "may not fit this folder" in report  # the report says it too
    # calibrating on the folder itself instead: named, and its calibration patients are not scored
    m = evaluate(run, data=biased, split="all", calibration="folder", out=tmp_path / "ev_own", n_boot=0, progress=False)
    assert m["calibration"]["source"] == "folder" and "left out" in m["calibration_words"]
    assert not set(m["calibration_cases"]) & set(m["eval_cases"])


def test_a_recipe_can_limit_the_residual_to_some_input_sequences():
    """FLAIR and T2 only, of a four-sequence input: the map is the residual averaged over those two channels."""
    import torch

    from uad.models import create_model
    from uad.scoring.scorers import ModelScorer

    model = create_model("autoencoder", in_channels=4, image_size=32).eval()
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        recon = model.reconstruct(x)
    scorer = ModelScorer(model, modalities=("flair", "t1", "t1ce", "t2"))
    maps, _, _ = scorer.raw(x.numpy(), np.ones((2, 32, 32), bool), np.full(2, 1024), channels=("flair", "t2"))
    want = (x - recon).clamp_min(0)[:, [0, 3]].mean(dim=1)
    assert np.allclose(maps, want.numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="not among the model's inputs"):
        scorer.raw(x.numpy(), np.ones((2, 32, 32), bool), np.full(2, 1024), channels=("flair", "dwi"))
    r = ScoringRecipe(channels=("flair", "t2"))
    assert ScoringRecipe.from_dict(r.to_dict()) == r and "flair+t2 only" in r.describe()
    assert "channels" not in ScoringRecipe().to_dict()  # recipes without it keep their old keys
