"""Evaluation: slice and pixel metrics for a model and both baselines on the same slices and pixels.

Thresholds that a user could actually deploy are calibrated on *healthy validation slices only* (1 %,
5 %, 10 % pixel false-positive rate); ``best_dice`` looks at the test labels and is reported as the
oracle it is. Pixel metrics stream through fixed-bin histograms (exact up to 10,000 score bins on
[0, 1]), so a full BraTS test split stays within memory.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uad.checkpoints import weights as ckpt_weights
from uad.checkpoints.record import CheckpointRecord, SplitRecord
from uad.core import fileio, paths
from uad.core.errors import ConfigError
from uad.data import identity
from uad.data.demo import resolve_data_root
from uad.data.splits import DEFAULT_RATIOS, split_cases
from uad.data.store import SliceStore, build_store
from uad.evaluation import drift, metrics, summaries, tally_io
from uad.evaluation.cohort import CASES_NOTE, Tally, calibrate, score_cohort, summarise
from uad.runs.folders import EvaluationLock
from uad.scoring.recipe import Calibration, ScoringRecipe, Threshold
from uad.scoring.scorers import BASELINES, ModelScorer, baseline

SPLIT_CHOICES = ("test", "val", "train", "all")


def data_root_for(record: CheckpointRecord, data: str | Path | None) -> Path:
    """The dataset to evaluate on: the one given, else the one the checkpoint was trained on."""
    if data is not None:
        return Path(data)
    trained = record.trained_root
    if trained is None or record.data.demo:
        return resolve_data_root(None)
    if not trained.is_dir():
        raise ConfigError(f"the checkpoint's training data {trained} is not here; pass --data DIR")
    return trained


@dataclass
class SplitPlan:
    """Which cases an evaluation scores and which calibrate its thresholds, and why."""

    eval_cases: list[str]
    calibration_cases: list[str]
    source: str  # "recorded" (the checkpoint's own case lists), "recipe" (old checkpoints) or "external"
    missing: list[str] = field(default_factory=list)  # recorded cases of the split that are not here now
    training_overlap: list[str] = field(default_factory=list)  # evaluated cases the model was trained on
    calibration: str = "run"  # "run": the run's own validation patients; "folder": this folder's own (CALIBRATIONS)


CALIBRATIONS = ("run", "folder")
CALIBRATION_WORDS = {
    "run": "thresholds calibrated on the run's own validation patients (its training data)",
    "folder": "thresholds calibrated on this folder's own healthy slices (those patients left out of the scored set)",
}


def split_for(store: SliceStore, record: CheckpointRecord | None, split: str, root: Path | None = None,
              calibration: str = "run") -> SplitPlan:
    """The evaluation's cases, from the patient lists the checkpoint recorded at training time.

    Recomputing a split from whatever cases exist now would move training patients into the test set as
    soon as one case is added, removed or unreadable, so the recorded lists decide: a ``test``/``val``
    evaluation scores the recorded cases that are present (the absent ones are reported by name) and never
    a training case. ``all`` scores every case; on a folder other than the training one it is labelled
    "external", and its thresholds come from the run's own calibration (``calibration="run"``: no
    calibration cases here) or from a share of this folder's labelled patients (``"folder"``), who are then
    left out of the scored set. Checkpoints older than the recorded lists fall back to their ratio + seed recipe.
    """
    if split not in SPLIT_CHOICES:
        raise ConfigError(f"split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    present = set(store.case_ids)
    labelled = store.labelled_ids
    unlabelled = [c for c in store.case_ids if c not in set(labelled)]
    recipe = record.split if record is not None else SplitRecord()
    ratios = recipe.ratios or DEFAULT_RATIOS
    recorded = recipe.cases
    trained_root = record.trained_root if record is not None else None
    same_data = root is None or (trained_root is not None and identity.same_folder(trained_root, root))
    if recorded:
        parts = {k: list(recorded.get(k, ())) for k in ("train", "val", "test")}
        source = "recorded"
    else:
        parts = split_cases(labelled, ratios, recipe.seed)
        source = "recipe"
    trained_on = set(parts["train"])
    own_calibration = [c for c in (parts["val"] or parts["train"]) if c in present and c in set(labelled)]
    if split == "all":
        cases = labelled + unlabelled
        if same_data:
            return SplitPlan(cases, own_calibration, source, [], sorted(trained_on & set(cases)), "run")
        if calibration == "run":  # what a new site without labels gets: the run's own thresholds
            return SplitPlan(cases, [], "external", [], sorted(trained_on & set(cases)), "run")
        # This folder's own healthy slices of the recipe's validation share calibrate; they are not scored.
        own = split_cases(labelled, ratios, recipe.seed) if labelled else {"val": [], "train": []}
        calib = own["val"] or own["train"][:1]
        scored = [c for c in cases if c not in set(calib)]
        return SplitPlan(scored, calib, "external", [], sorted(trained_on & set(scored)), "folder")
    wanted = parts[split]
    missing = sorted(set(wanted) - present)
    cases = [c for c in store.case_ids if c in set(wanted)]
    if source == "recorded" and not same_data:
        # Another folder: the recorded ids name the recorded patients only if their files are the recorded ones.
        differ = [c for c in cases if c not in set(unlabelled) and not _same_files(store, record, c)]
        if differ:
            shown = ", ".join(differ[:10]) + (f" and {len(differ) - 10} more" if len(differ) > 10 else "")
            raise ConfigError(f"{root} is not the folder this checkpoint was trained on ({trained_root or 'not recorded'}), "
                              f"and its cases {shown} differ from the recorded {split} patients of the same ids "
                              "(file sizes): they are other patients. Use --split all to score this folder as "
                              "external data")
    overlap = sorted(trained_on & set(cases))
    if overlap:
        raise ConfigError(f"the {split} split would score cases the model was trained on ({', '.join(overlap)}); "
                          f"use --split all to score them knowingly")
    # Unlabelled cases are scored with the test split (they are never trained on and have no label to
    # leak), never counted in the metrics.
    if split == "test":
        cases += [c for c in unlabelled if c not in set(cases)]
    return SplitPlan(cases, own_calibration, source, missing, [], "run")


def _scorers(ckpt, device) -> list:
    return [ModelScorer.of(ckpt, device=device)] + [baseline(b) for b in BASELINES]


def run_calibration(run: str | Path, ckpt, recipe: ScoringRecipe, device: str | None = None,
                    progress: bool = False) -> dict[str, Calibration]:
    """The run's own label-free thresholds for ``recipe``, for the model and both baselines (by scorer name):
    calibrated on the healthy slices of its recorded validation patients, in the folder it was trained on.

    Read from the run's calibration files when one was made for these weights and this recipe; otherwise
    computed (the training data must be here) and kept for next time (``summaries.calibration_file``).
    """
    sha = ckpt.record.weights_sha256
    recipe = recipe.for_model(ckpt.model.residual)
    for path in summaries.calibration_files(run, recipe):
        found = summaries.read_calibrations(path)
        if found and all(c.weights_sha256 == sha and c.recipe == recipe for n, c in found.items() if n == ckpt.model.name):
            return found
    trained = ckpt.record.trained_root
    if trained is None or not trained.is_dir():
        raise ConfigError(f"{run}: its thresholds are calibrated on its validation patients in {trained or 'its training data'}, "
                          "which is not on this machine; evaluate with --calibration folder to calibrate on this "
                          "folder's own healthy slices instead (those patients are then left out of the scored set)")
    store = build_store(trained, ckpt.preprocess, progress=progress)
    plan = split_for(store, ckpt.record, "val")
    if not plan.calibration_cases:
        raise ConfigError(f"{run}: none of its validation patients is in {trained}: its thresholds cannot be calibrated")
    dataset = identity.dataset_ref(trained)
    out = {}
    for scorer in _scorers(ckpt, device):
        thresholds, quantiles = calibrate(store, scorer, plan.calibration_cases, recipe)
        out[scorer.name] = _calibration(recipe, thresholds, plan.calibration_cases, dataset,
                                        sha if scorer.name == ckpt.model.name else None, "run", quantiles)
    summaries.write_calibrations(summaries.calibration_file(run, recipe), out)
    return out


def _calibration(recipe, thresholds: list[dict], cases, dataset, sha, source, quantiles=()) -> Calibration:
    return Calibration(recipe, tuple(Threshold(t["rate"], t["threshold"], t.get("calibration_fpr")) for t in thresholds),
                       tuple(cases), tuple(sorted(dataset.to_dict().items())), sha, source,
                       tuple((float(q), float(v)) for q, v in quantiles))


def _same_files(store: SliceStore, record: CheckpointRecord, case_id: str) -> bool:
    """Whether the case's files here have the sizes the checkpoint recorded for that case id (by file name)."""
    recorded = {Path(f.file).name: f.bytes for f in record.data.cases.get(case_id, ())}
    here = {Path(str(path)).name: size for path, size, *_ in store.manifest["cases"].get(case_id, {}).get("files", [])}
    common = set(recorded) & set(here)
    return bool(common) and all(recorded[name] == here[name] for name in common)


def evaluate(
    run: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    save_maps: bool = False,
    recipe: ScoringRecipe = ScoringRecipe(),
    calibration: str = "run",
    n_boot: int = 1000,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run or checkpoint folder on a dataset and split with one scoring recipe; returns the metrics.

    Thresholds: on the run's own data, its recorded validation patients calibrate them; on another folder,
    by default the run's own calibration is applied (what a new site without labels gets) and the healthy
    false-positive rate it reaches there is reported beside the nominal one; ``calibration="folder"``
    calibrates on this folder's own healthy slices instead, leaving those patients out of the scored set.

    Writes, in ``out`` (default ``<run>/eval/<dataset-id>/<split>/``, see ``summaries.write_base``): curves.json,
    slices.csv (one row per slice), cases.csv (one row per case), cases.npz (per-case pixel histograms and
    counts, for patient and paired bootstraps), progress.json while it works, and metrics.json last (its
    presence marks a complete evaluation). metrics.json records the recipe, the calibration (thresholds, the
    patients and data they came from) and the checkpoint's identity (weights hash, epoch).
    """
    with _evaluation_lock(run):  # the run is not archived or deleted from under this evaluation
        return _evaluate(run, data, split, out, save_maps, recipe, calibration, n_boot, seed, device, progress)


def _evaluation_lock(run: str | Path) -> EvaluationLock:
    """The shared evaluation lock of the run folder holding the checkpoint (none for a shipped checkpoint,
    which is never written, moved or deleted)."""
    path = Path(run)
    for folder in (path, path.parent):
        if (folder / "status.json").is_file() or (folder / "config.json").is_file():
            return EvaluationLock(None) if paths.is_shipped(folder) else EvaluationLock.shared(folder)
    return EvaluationLock(None)


def _evaluate(run, data, split, out, save_maps, recipe, calibration, n_boot, seed, device, progress) -> dict[str, Any]:
    ckpt = ckpt_weights.load(run, device=device)
    recipe = recipe.for_model(ckpt.model.residual)
    root = data_root_for(ckpt.record, data)
    dataset = identity.dataset_ref(root)
    out_dir = Path(out) if out else summaries.eval_folder(summaries.write_base(run), dataset, split)
    progress_file = ProgressFile(out_dir / PROGRESS)
    progress_file.update("preparing", 0, 0)  # the slice cache of a new dataset takes a while to build
    store = build_store(root, ckpt.preprocess, progress=progress)
    plan = split_for(store, ckpt.record, split, root if data is not None else None, calibration)
    if not plan.eval_cases:
        missing = f" (recorded but missing here: {', '.join(plan.missing)})" if plan.missing else ""
        raise ConfigError(f"no case of the {split} split is in {root}{missing}")
    scorers = _scorers(ckpt, device)
    given, given_quantiles = None, None
    if plan.source == "external" and plan.calibration == "run":
        progress_file.update("calibrating", 0, 1)
        given_cal = run_calibration(run, ckpt, recipe, device=device, progress=progress)
        given = {name: [{"rate": t.rate, "threshold": t.value, "calibration_fpr": t.calibration_fpr} for t in c.thresholds]
                 for name, c in given_cal.items()}
        given_quantiles = {name: list(c.healthy_quantiles) for name, c in given_cal.items()}
    case_rows: list[dict[str, Any]] = []
    tallies, rows = score_cohort(store, scorers, plan.eval_cases, plan.calibration_cases, recipe,
                                 maps_dir=out_dir / "maps" if save_maps else None, progress=progress,
                                 case_rows=case_rows, on_progress=progress_file.update, thresholds=given,
                                 quantiles=given_quantiles)

    # Metrics, with patient-level bootstrap intervals.
    progress_file.update("summarising", 0, 1)
    results: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, tally in tallies.items():
        results[name], curves[name] = summarise(tally, n_boot, seed)
    model_name = scorers[0].name
    sha = ckpt.record.weights_sha256
    calib_dataset = ckpt.record.trained_root if given is not None else root
    calibrations = {name: _calibration(recipe, tally.thresholds,
                                       given_cal[name].cases if given is not None else plan.calibration_cases,
                                       identity.dataset_ref(calib_dataset), sha if name == model_name else None,
                                       plan.calibration, tally.healthy_quantiles)
                    for name, tally in tallies.items()}
    if plan.calibration == "run" and plan.source != "external":  # the run's own thresholds: keep them for other folders
        summaries.write_calibrations(summaries.calibration_file(run, recipe), calibrations)
    summary = {
        "model": model_name,
        "checkpoint": {"path": str(ckpt.path), "weights_sha256": sha, "epoch": ckpt.record.epoch,
                       "saved": ckpt.record.saved},
        "run": Path(run).name,
        "data_root": str(root),
        "dataset": dataset.to_dict(),
        "split": split,
        "split_source": plan.source,
        "eval_cases": plan.eval_cases,
        "calibration_cases": list(calibrations[model_name].cases),
        "missing_cases": plan.missing,
        "training_cases_evaluated": plan.training_overlap,
        "n_slices": len(rows),
        "n_labelled_cases": len(set(plan.eval_cases) & set(store.labelled_ids)),
        "n_unlabelled_cases": len(set(plan.eval_cases) - set(store.labelled_ids)),
        "preprocess": ckpt.preprocess.to_dict(),
        "recipe": recipe.to_dict(),
        "postprocess": recipe.post.to_dict(),
        "calibration": calibrations[model_name].to_dict(),
        "calibration_words": CALIBRATION_WORDS[plan.calibration],
        # label-free: does the calibration's healthy scale still hold on this folder (every brain pixel scored here)?
        "drift": drift.check(calibrations[model_name].healthy_quantiles, tallies[model_name].brain,
                             tallies[model_name].thresholds),
        "pixel_metrics_note": "exact up to 10,000 score bins on [0, 1]; pixels inside the eroded brain mask",
        "best_dice_note": metrics.ORACLE_NOTE,
        "cases_note": CASES_NOTE,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "unit": "patient"},
        **results[model_name],
        "baselines": {b: results[b] for b in BASELINES},
        "baseline_calibrations": {b: calibrations[b].to_dict() for b in BASELINES},
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    fileio.write_json(out_dir / "curves.json", curves)
    _write_csv(out_dir / "slices.csv", rows)
    _write_csv(out_dir / "cases.csv", case_rows)
    write_case_arrays(out_dir / CASE_ARRAYS, tallies)
    fileio.write_json(out_dir / "metrics.json", summary)  # last: its presence marks the evaluation complete
    progress_file.update("done", 1, 1)
    return summary


CASE_ARRAYS = "cases.npz"


def write_case_arrays(path: Path, tallies: dict[str, Tally]) -> None:
    """Per scorer: every field of its tally (``tally_io``): per labelled case the pixel histograms, threshold
    counts and healthy-pixel counts, and per slice the case, label and score (what a patient bootstrap, and a
    paired one between methods, resamples)."""
    tally_io.write(path, {name: t for name, t in tallies.items() if t.case_order})


PROGRESS = "progress.json"


class ProgressFile:
    """``progress.json`` in the output folder: {phase, done, total, updated}, replaced atomically at most
    twice a second, so the app can draw a progress bar for a background evaluation."""

    def __init__(self, path: Path):
        self.path = path
        self._last = 0.0

    def update(self, phase: str, done: int, total: int) -> None:
        now = time.time()
        if phase not in ("done", "summarising") and done not in (0, total) and now - self._last < 0.5:
            return
        self._last = now
        fileio.write_json(self.path, {"phase": phase, "done": int(done), "total": int(total), "updated": now})


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fileio.write_text(path, buf.getvalue())

