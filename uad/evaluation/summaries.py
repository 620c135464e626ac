"""Evaluation summaries: one typed reading of what ``uad evaluate`` wrote, and its where evaluations live.

The CLI's ``compare`` and ``report``, the app's Overview, Explore and Compare pages, the HTML report and
the benchmarks all shape metrics through this module, so a number means the same everywhere.

An evaluation is stored per dataset and split::

    <run>/eval/<dataset-id>/<split>/   metrics.json, curves.json, slices.csv, cases.csv, progress.json
    <run>/eval/                        the older layout (one evaluation per run), still read

``<dataset-id>`` is ``demo`` for the demo cohort, else ``<folder name>-<hash of its absolute path>``.
Torch-free: listing and reading evaluations never imports a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uad.core import fields, fileio, paths
from uad.data.identity import (
    DEMO_ID,
    DatasetRef,
    dataset_ref,
    repo_path,
)

CASE_RATE = 0.05  # the per-case table's threshold: where 5 % of healthy calibration pixels are flagged


BASELINE_LABELS = {"intensity": "intensity baseline", "brain_area": "brain-area baseline"}


SPLIT_WORDS = {"test": "test split", "val": "validation split", "train": "training split", "all": "all cases"}


def _shipped_name(run: Path) -> str | None:
    """``autoencoder`` or ``real/autoencoder`` for a checkpoint shipped in the repository, else None."""
    try:
        return Path(run).resolve().relative_to(paths.checkpoints_dir()).as_posix()
    except ValueError:
        return None


def write_base(run: str | Path) -> Path:
    """The ``eval/`` folder new evaluations of ``run`` go to: ``<run>/eval``, or for a shipped checkpoint
    ``runs/shipped-eval/<name>/eval`` (nothing is ever written into the repository's checkpoints folder)."""
    name = _shipped_name(Path(run))
    return paths.runs_dir() / "shipped-eval" / name / "eval" if name else Path(run) / "eval"


def eval_bases(run: str | Path) -> list[Path]:
    """Every ``eval/`` folder holding evaluations of ``run`` (its own, and for shipped ones the runs/ copy)."""
    own = Path(run) / "eval"
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
        return cls.from_metrics(m, folder)

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
        return (self.dataset.id, self.split, tuple(self.raw.get("eval_cases") or []), self.image_size,
                tuple(self.modalities), tuple(sorted((self.raw.get("postprocess") or {}).items())),
                boot.get("n_boot"), boot.get("seed"))

    def at_fpr(self, rate: float) -> dict[str, Any]:
        return at_fpr(self.raw, rate)

    def presets(self) -> list[tuple[float, float]]:
        """(healthy FPR, threshold) pairs calibrated on the healthy slices of this evaluation's calibration cases."""
        import math

        out = []
        for t in self.raw.get("healthy_fpr_thresholds") or []:
            try:
                rate, thr = float(t["healthy_fpr"]), float(t["threshold"])
            except (KeyError, TypeError, ValueError):
                continue  # an undefined threshold (no healthy pixels) is stored as null
            if math.isfinite(thr):
                out.append((rate, thr))
        return out

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
_TEXTS = ("model", "run", "checkpoint", "split", "split_source", "data_root", "evaluated", "cases_note",
          "pixel_metrics_note", "best_dice_note")
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
                for k in ("healthy_fpr", "threshold", "calibration_fpr", "dice", "precision", "recall", "f1"):
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


def at_fpr(m: dict[str, Any], rate: float) -> dict[str, Any]:
    """The operating point calibrated at a healthy false-positive rate ({} when the evaluation has none)."""
    for t in m.get("healthy_fpr_thresholds") or []:
        if isinstance(t, dict) and isinstance(t.get("healthy_fpr"), (int, float)) and abs(t["healthy_fpr"] - rate) < 1e-9:
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

