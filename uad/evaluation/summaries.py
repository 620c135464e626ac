"""Evaluation summaries: one typed reading of what ``uad evaluate`` wrote, and where evaluations live.

The CLI's ``compare`` and ``report``, the app's Overview, Explore and Compare pages, the HTML report and
the benchmarks all shape metrics through this module, so a number means the same everywhere.

An evaluation is stored per dataset and split::

    <run>/eval/<dataset-id>/<split>/   metrics.json, curves.json, slices.csv, cases.csv, cases.npz, progress.json
    <run>/eval/                        the older layout (one evaluation per run), still read
    <run>/calibrations/<recipe key>.json   the run's own thresholds per scoring recipe (its validation patients)

metrics.json records the scoring recipe, the calibration (thresholds with the patients and data they came
from) and the checkpoint (weights hash, epoch) it was made with: an evaluation of other weights is stale.

``<dataset-id>`` is ``demo`` for the demo cohort, else ``<folder name>-<hash of its absolute path>``.
Torch-free: listing and reading evaluations never imports a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uad.core import fields, fileio, paths
from uad.core.errors import ConfigError
from uad.data.identity import (
    DEMO_ID,
    DatasetRef,
    dataset_ref,
    repo_path,
)
from uad.scoring.recipe import Calibration, PostprocessConfig, ScoringRecipe, Threshold

BASELINE_LABELS = {"intensity": "intensity baseline", "brain_area": "brain-area baseline"}


SPLIT_WORDS = {"test": "test split", "val": "validation split", "train": "training split", "all": "all cases"}
CALIBRATIONS = "calibrations"  # beside eval/: the run's own thresholds per recipe


def shipped_name(run: Path) -> str | None:
    """``autoencoder`` or ``real/autoencoder`` for a checkpoint shipped in the repository, else None."""
    try:
        return Path(run).resolve().relative_to(paths.checkpoints_dir()).as_posix()
    except ValueError:
        return None


def run_folder(path: str | Path) -> Path:
    """The run folder a path names: the path itself, or for a checkpoint folder inside a run (``best/``,
    ``last/``) its run, so nothing is ever written into a checkpoint folder (a later save replaces it whole)."""
    p = Path(path)
    if p.name in ("best", "last") and (p / "checkpoint.json").is_file():
        return p.parent
    return p


def write_base(run: str | Path) -> Path:
    """The ``eval/`` folder new evaluations of ``run`` go to: ``<run>/eval``, or for a shipped checkpoint
    ``runs/shipped-eval/<name>/eval`` (nothing is ever written into the repository's checkpoints folder)."""
    run = run_folder(run)
    name = shipped_name(run)
    return paths.runs_dir() / "shipped-eval" / name / "eval" if name else run / "eval"


def calibration_file(run: str | Path, recipe: ScoringRecipe) -> Path:
    """Where the run's own calibration for ``recipe`` is written (never inside a shipped checkpoint)."""
    return write_base(run).parent / CALIBRATIONS / f"{recipe.key}.json"


def calibration_files(run: str | Path, recipe: ScoringRecipe) -> list[Path]:
    """Where the run's own calibration for ``recipe`` may be: shipped with the checkpoint, or written since."""
    own = run_folder(run) / CALIBRATIONS / f"{recipe.key}.json"
    written = calibration_file(run, recipe)
    return [own] if own == written else [own, written]


def read_calibrations(path: Path) -> dict[str, Calibration]:
    """A calibration file: {scorer name: Calibration}; {} when it is missing or malformed (it is then made again)."""
    try:
        raw = fileio.read_json(path)
        if not isinstance(raw, dict):
            return {}
        return {str(name): Calibration.from_dict(c) for name, c in raw.items()}
    except (OSError, ValueError, ConfigError):
        return {}


def write_calibrations(path: Path, calibrations: dict[str, Calibration]) -> None:
    fileio.write_json(path, {name: c.to_dict() for name, c in calibrations.items()})


def eval_bases(run: str | Path) -> list[Path]:
    """Every ``eval/`` folder holding evaluations of ``run`` (its own, and for shipped ones the runs/ copy)."""
    own = run_folder(run) / "eval"
    other = write_base(run)
    return [own] if other == own else [own, other]


def eval_folder(base: str | Path, dataset: DatasetRef, split: str) -> Path:
    """Where the evaluation of a run on ``dataset`` and ``split`` lives under its ``eval/`` folder."""
    return Path(base) / dataset.id / split


@dataclass
class EvaluationSummary:
    """One evaluation's metrics.json, typed: the model's metrics, its baselines, and where they come from."""

    raw: dict[str, Any] = field(repr=False)
    folder: Path | None = None
    dataset: DatasetRef = field(default_factory=lambda: dataset_ref(None))

    @classmethod
    def from_metrics(cls, m: dict[str, Any], folder: str | Path | None = None) -> "EvaluationSummary":
        rec = m.get("dataset")
        if isinstance(rec, dict) and rec.get("id"):
            ds = DatasetRef(str(rec["id"]), str(rec.get("label") or rec["id"]), str(rec.get("root") or ""))
        else:
            ds = dataset_ref(m.get("data_root"))
        return cls(m, Path(folder) if folder is not None else None, ds)

    @classmethod
    def read(cls, folder: str | Path) -> "EvaluationSummary":
        """metrics.json of an evaluation folder; ValueError naming the file when it is missing or malformed."""
        path = Path(folder) / "metrics.json"
        try:
            m = fileio.read_json(path)
        except FileNotFoundError:
            raise ValueError(f"{path}: no evaluation here") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable evaluation ({exc})") from None
        if not isinstance(m, dict):
            raise ValueError(f"{path}: not a uad evaluation (expected a JSON object)")
        try:
            check_metrics(m)
        except fields.FieldError as exc:
            raise ValueError(f"{path}: damaged evaluation ({exc})") from None
        summary = cls.from_metrics(m, folder)
        try:  # the recipe and thresholds are checked when read, not first when shown
            _ = summary.recipe, summary.calibration
        except ValueError as exc:
            raise ValueError(f"{path}: damaged evaluation ({str(exc).split(': ', 1)[-1]})") from None
        return summary

    # what was evaluated
    @property
    def model(self) -> str:
        return str(self.raw.get("model") or "?")

    @property
    def split(self) -> str:
        return str(self.raw.get("split") or "test")

    @property
    def key(self) -> tuple[str, str]:
        """(dataset id, split): evaluations with the same key are comparable."""
        return self.dataset.id, self.split

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.raw.get("preprocess") or {}

    @property
    def image_size(self) -> int | None:
        return self.preprocess.get("image_size")

    @property
    def modalities(self) -> list[str]:
        return list(self.preprocess.get("modalities") or [])

    @property
    def where(self) -> str:
        """'demo cohort · test split': the dataset and split, in words."""
        return f"{self.dataset.label} · {SPLIT_WORDS.get(self.split, self.split)}"

    @property
    def local_root(self) -> Path | None:
        """The evaluated folder on this machine (the demo cohort is wherever this home keeps it)."""
        if self.dataset.id == DEMO_ID:
            return paths.demo_dir()
        root = self.dataset.root or self.raw.get("data_root")
        return repo_path(root) if root else None

    @property
    def baselines(self) -> dict[str, dict[str, Any]]:
        b = self.raw.get("baselines")
        return b if isinstance(b, dict) else {}

    @property
    def baseline_group(self) -> tuple:
        """What baselines depend on: the same slices and pixels (dataset, split, cases, working size,
        channels), post-processing and bootstrap. Equal keys give equal baseline numbers."""
        boot = self.raw.get("bootstrap") or {}
        try:
            post = tuple(sorted(self.recipe.post.to_dict().items()))
        except ValueError:
            post = ()
        return (self.dataset.id, self.split, tuple(self.raw.get("eval_cases") or []), self.image_size,
                tuple(self.modalities), post, boot.get("n_boot"), boot.get("seed"))

    def operating_point(self, rate: float) -> dict[str, Any]:
        """The model's numbers at its threshold calibrated for healthy FPR ``rate`` ({} when there is none)."""
        return operating_point(self.raw, rate)

    @property
    def recipe(self) -> ScoringRecipe:
        """The scoring recipe the evaluation used (older evaluations recorded only post-processing: residual None)."""
        rec = self.raw.get("recipe")
        try:
            if isinstance(rec, dict):
                return ScoringRecipe.from_dict(rec)
            return ScoringRecipe(None, PostprocessConfig.from_dict(self.raw.get("postprocess") or {}))
        except ConfigError as exc:
            raise ValueError(f"{self.folder}: the recorded scoring recipe is invalid ({exc})") from None

    @property
    def calibration(self) -> Calibration:
        """The model's calibrated thresholds and where they come from (older evaluations: rebuilt from their
        operating points and calibration cases)."""
        rec = self.raw.get("calibration")
        try:
            if isinstance(rec, dict):
                return Calibration.from_dict(rec)
        except ConfigError as exc:
            raise ValueError(f"{self.folder}: the recorded calibration is invalid ({exc})") from None
        thresholds = []
        for t in self.raw.get("healthy_fpr_thresholds") or []:
            rate, thr = _rate_of(t), t.get("threshold") if isinstance(t, dict) else None
            if rate is not None:
                thresholds.append(Threshold(rate, float(thr) if isinstance(thr, (int, float)) and math.isfinite(thr) else None,
                                            t.get("calibration_fpr") if isinstance(t.get("calibration_fpr"), (int, float)) else None))
        cases = [c for c in self.raw.get("calibration_cases") or [] if isinstance(c, str)]
        return Calibration(self.recipe, tuple(thresholds), tuple(cases), tuple(sorted(self.dataset.to_dict().items())),
                           self.weights_sha256, "folder" if self.raw.get("split_source") == "external" else "run")

    def presets(self) -> list[tuple[float, float]]:
        """(healthy FPR, threshold) pairs of this evaluation's calibration (undefined thresholds left out)."""
        return self.calibration.presets()

    @property
    def weights_sha256(self) -> str | None:
        """The SHA-256 of the weights the evaluation scored (None for evaluations older than that record)."""
        ck = self.raw.get("checkpoint")
        sha = ck.get("weights_sha256") if isinstance(ck, dict) else None
        return sha if isinstance(sha, str) else None

    @property
    def checkpoint_epoch(self) -> int | None:
        ck = self.raw.get("checkpoint")
        epoch = ck.get("epoch") if isinstance(ck, dict) else None
        return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None

    @property
    def drift_warning(self) -> str | None:
        """The label-free drift check's warning (the run's thresholds may not fit this folder), if it raised one."""
        d = self.raw.get("drift")
        w = d.get("warning") if isinstance(d, dict) else None
        return w if isinstance(w, str) else None

    def staleness(self, current_sha256: str | None) -> str | None:
        """Why this evaluation may not describe the run's current weights, or None when it does."""
        if current_sha256 is None:
            return None
        if self.weights_sha256 is None:
            return "it predates recording which weights it scored: evaluate again to be sure"
        if self.weights_sha256 != current_sha256:
            return "the checkpoint changed since (new weights): evaluate again"
        return None

    def provenance(self, current_sha256: str | None = None) -> str:
        """What produced these numbers, in one line: the scoring recipe, the weights, where the thresholds come
        from; and, when the run's weights are now others (``current_sha256``), that the numbers are stale."""
        try:
            recipe = f"recipe {self.recipe.key} ({self.recipe.describe()})"
        except ValueError as exc:
            recipe = str(exc)
        sha = (self.weights_sha256 or "not recorded")[:12]
        epoch = f", epoch {self.checkpoint_epoch}" if self.checkpoint_epoch is not None else ""
        words = self.raw.get("calibration_words") if isinstance(self.raw.get("calibration_words"), str) else "calibrated thresholds"
        stale = self.staleness(current_sha256)
        return f"{recipe}; weights {sha}{epoch}; {words}" + (f" — STALE: {stale}" if stale else "")

    def cases(self):
        """The per-case table (cases.csv) as a DataFrame, or None for evaluations that wrote none."""
        import pandas as pd

        if self.folder is None or not (self.folder / "cases.csv").is_file():
            return None
        try:
            df = pd.read_csv(self.folder / "cases.csv")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.folder / 'cases.csv'}: unreadable per-case table ({exc})") from None
        if "case_id" not in df.columns:
            raise ValueError(f"{self.folder / 'cases.csv'}: not a per-case table (no case_id column)")
        df["case_id"] = df["case_id"].astype(str)
        return df


_NUMBERS = ("slice_auroc", "slice_ap", "pixel_auroc", "pixel_ap")
_COUNTS = ("n_slices", "n_tumour_slices", "n_pixels", "n_tumour_pixels", "n_labelled_cases", "n_unlabelled_cases")
_TEXTS = ("model", "run", "split", "split_source", "data_root", "evaluated", "cases_note",
          "pixel_metrics_note", "best_dice_note", "calibration_words")
_CASE_LISTS = ("eval_cases", "calibration_cases", "missing_cases", "training_cases_evaluated")


def _check_method(m: dict[str, Any], where: str) -> None:
    """The metrics of one method (the model or a baseline), as ``uad evaluate`` writes them."""
    try:
        for key in _NUMBERS:
            fields.number(m, key)
        for key in _COUNTS:
            fields.whole(m, key)
        for key in ("slice_auroc_ci", "pixel_ap_ci", "best_dice", "slice_youden", "slice_best_f1"):
            part = fields.obj(m, key)
            if part is not None:
                for k in ("low", "high", "dice", "threshold"):
                    fields.number(part, k)
        thresholds = m.get("healthy_fpr_thresholds")
        if thresholds is not None:
            if not isinstance(thresholds, list) or not all(isinstance(t, dict) for t in thresholds):
                raise fields.FieldError(f"healthy_fpr_thresholds must be a list of objects, got {fields.show(thresholds)}")
            for t in thresholds:
                for k in ("rate", "healthy_fpr", "threshold", "calibration_fpr", "reached_fpr", "dice", "precision",
                          "recall", "f1"):
                    fields.number(t, k)
                for k in ("tp", "fp", "fn"):
                    fields.whole(t, k)
    except fields.FieldError as exc:
        raise fields.FieldError(f"{where}{exc}") from None


def check_metrics(m: dict[str, Any]) -> None:
    """Every field a reader of metrics.json uses, of its type (FieldError naming the first that is not).
    Fields this version does not know are left alone."""
    fields.plain(m, "metrics")
    for key in _TEXTS:
        fields.text(m, key)
    for key in _CASE_LISTS:
        value = m.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
            raise fields.FieldError(f"{key} must be a list of case ids, got {fields.show(value)}")
    ck = m.get("checkpoint")  # a path in evaluations older than the weights' record, else an object
    if isinstance(ck, dict):
        for key in ("path", "weights_sha256", "saved"):
            fields.text(ck, key, 4096)
        fields.whole(ck, "epoch", 0, 10**9)
    elif ck is not None:
        fields.text(m, "checkpoint")
    drift = fields.obj(m, "drift")
    if drift is not None:
        for key in ("q75_ratio", "q90_ratio", "factor"):
            fields.number(drift, key)
        fields.text(drift, "warning")
    # The recipe and calibration are checked in full when read (EvaluationSummary.recipe / .calibration).
    fields.obj(m, "recipe")
    fields.obj(m, "calibration")
    dataset = fields.obj(m, "dataset")
    if dataset is not None:
        for key in ("id", "label", "root"):
            fields.text(dataset, key, 4096)
    pre = fields.obj(m, "preprocess")
    if pre is not None:
        fields.whole(pre, "image_size", 1, 4096)
        mods = pre.get("modalities")
        if mods is not None and not (isinstance(mods, list) and all(isinstance(x, str) for x in mods)):
            raise fields.FieldError(f"preprocess modalities must be a list of names, got {fields.show(mods)}")
    post = fields.obj(m, "postprocess")
    if post is not None and any(isinstance(v, (list, dict)) for v in post.values()):
        raise fields.FieldError("postprocess settings must be numbers, texts or true/false")
    boot = fields.obj(m, "bootstrap")
    if boot is not None:
        fields.whole(boot, "n_boot")
        fields.whole(boot, "seed", 0, 2**63 - 1)
    _check_method(m, "")
    baselines = fields.obj(m, "baselines")
    if baselines is not None:
        for name, b in baselines.items():
            if not isinstance(b, dict):
                raise fields.FieldError(f"baselines {name} must be an object, got {fields.show(b)}")
            _check_method(b, f"baselines {name}: ")


def find_evaluations(bases: list[str | Path]) -> list[EvaluationSummary]:
    """Every readable evaluation under the given ``eval/`` folders, newest first (unreadable ones skipped;
    ``load_evaluation`` reports why when one is opened)."""
    found: dict[Path, EvaluationSummary] = {}
    for base in bases:
        base = Path(base)
        candidates = [base] + sorted(p.parent for p in base.glob("*/*/metrics.json"))
        for folder in candidates:
            if folder.resolve() in found or not (folder / "metrics.json").is_file():
                continue
            try:
                found[folder.resolve()] = EvaluationSummary.read(folder)
            except ValueError:
                continue
    return sorted(found.values(), key=lambda s: str(s.raw.get("evaluated") or ""), reverse=True)


def home_evaluation(run: str | Path, trained: Path | None) -> EvaluationSummary | None:
    """The run's evaluation on the data it was trained on (``trained``: the folder its checkpoint's record
    names) if there is one, else its newest; None when it was never evaluated."""
    found = find_evaluations(eval_bases(run))
    own = pick(found, dataset_ref(trained).id) if trained is not None else None
    return own or (found[0] if found else None)


def pick(summaries: list[EvaluationSummary], dataset_id: str | None = None, split: str | None = None) -> EvaluationSummary | None:
    """The newest evaluation on ``dataset_id`` (and ``split`` when given), None when there is none."""
    return next((s for s in summaries if (dataset_id is None or s.dataset.id == dataset_id)
                 and (split is None or s.split == split)), None)


def _rate_of(t: Any) -> float | None:
    """The nominal healthy-FPR rate of an operating point (``rate``; ``healthy_fpr`` in older evaluations)."""
    if not isinstance(t, dict):
        return None
    r = t.get("rate", t.get("healthy_fpr"))
    return float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else None


def operating_point(m: dict[str, Any], rate: float) -> dict[str, Any]:
    """The numbers at the threshold calibrated for healthy FPR ``rate`` in one method's metrics ({} when none)."""
    for t in m.get("healthy_fpr_thresholds") or []:
        r = _rate_of(t)
        if r is not None and abs(r - rate) < 1e-9:
            return t
    return {}


def load_evaluation(folder: str | Path) -> dict[str, Any]:
    """An evaluation folder written by ``uad evaluate``: {"summary", "metrics", "curves", "slices" (labelled
    slices, a DataFrame)}, or {"error": why} when it cannot be read or holds nothing to compare."""
    import numpy as np
    import pandas as pd

    f = Path(folder)
    try:
        summary = EvaluationSummary.read(f)
        curves = fileio.read_json(f / "curves.json")
        slices = pd.read_csv(f / "slices.csv")
    except (OSError, ValueError) as exc:
        return {"error": f"{folder}: unreadable evaluation ({exc})"}
    if not isinstance(curves, dict) or not {"label", "score"} <= set(slices.columns):
        return {"error": f"{folder}: not a uad evaluation (curves.json or slices.csv has the wrong shape)"}
    slices = slices[pd.to_numeric(slices["label"], errors="coerce").notna()].copy()  # unlabelled cases have no label
    slices["label"] = slices["label"].astype(int)
    slices["score"] = pd.to_numeric(slices["score"], errors="coerce")
    slices = slices[np.isfinite(slices["score"])]
    if slices.empty or slices.label.nunique() < 2:
        return {"error": f"{folder}: the evaluation has no labelled slices of both kinds (healthy and tumour) to compare"}
    return {"summary": summary, "metrics": summary.raw, "curves": curves, "slices": slices}

