"""Evaluation summaries: one typed reading of what ``uad evaluate`` wrote, and its comparison rows.

The CLI's ``compare`` and ``report``, the app's Overview, Explore and Compare pages, the HTML report and
the benchmarks all shape metrics through this module, so a number means the same everywhere.

An evaluation is stored per dataset and split::

    <run>/eval/<dataset-id>/<split>/   metrics.json, curves.json, slices.csv, cases.csv, progress.json
    <run>/eval/                        the older layout (one evaluation per run), still read

``<dataset-id>`` is ``demo`` for the demo cohort, else ``<folder name>-<hash of its absolute path>``.
Torch-free: listing and reading evaluations never imports a model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uad import fileio, paths

ORACLE_FOOTNOTE = "* best Dice is an oracle: its threshold was chosen on the evaluated labels."
FPR_RATES = (0.01, 0.05, 0.10)
CASE_RATE = 0.05  # the per-case table's threshold: where 5 % of healthy calibration pixels are flagged
DEMO_ID = "demo"
LEGACY = "(legacy)"  # the dataset id shown for an old evaluation that recorded no data root
BASELINE_LABELS = {"intensity": "intensity baseline", "brain_area": "brain-area baseline"}
SPLIT_WORDS = {"test": "test split", "val": "validation split", "train": "training split", "all": "all cases"}


# -- datasets -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetRef:
    """Which folder an evaluation was run on: a stable id (folder names in ``eval/``), a label, the root."""

    id: str
    label: str
    root: str

    @property
    def title(self) -> str:
        return f"{self.label} ({self.root})" if self.root and self.label != self.root else (self.label or self.root)

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "label": self.label, "root": self.root}


def repo_path(root: str | Path) -> Path:
    """A path as recorded by uad, on this machine: relative ones are relative to the repository."""
    p = Path(root).expanduser()
    # Shipped checkpoints record their data relative to the repository, so no machine's paths leak.
    return (p if p.is_absolute() else paths.REPO_ROOT / p).resolve()


def dataset_ref(root: str | Path | None) -> DatasetRef:
    """The dataset identity of a folder: ``demo`` for the demo cohort, else ``<name>-<path hash>``."""
    if root is None or str(root) == "":
        return DatasetRef(LEGACY, "unknown dataset (not recorded)", "")
    resolved = repo_path(root)
    if resolved == paths.demo_dir().resolve() or Path(root).as_posix().rstrip("/") == "data/demo":
        return DatasetRef(DEMO_ID, "demo cohort", str(resolved))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", resolved.name).strip("-.") or "dataset"
    return DatasetRef(f"{slug}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}", resolved.name, str(resolved))


def trained_data_root(info: dict[str, Any]) -> Path | None:
    """The folder a checkpoint was trained on (from checkpoint.json's ``data``), None when not recorded."""
    data = info.get("data") or {}
    if data.get("demo"):
        return paths.demo_dir()
    return repo_path(data["root"]) if data.get("root") else None


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


# -- one evaluation -----------------------------------------------------------------------------------------------
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

    def row(self, label: str | None = None) -> dict[str, Any]:
        return summary_row(label or self.model, self.raw) | {"kind": "model"}

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


def home_evaluation(run: str | Path, checkpoint_info: dict[str, Any] | None) -> EvaluationSummary | None:
    """The run's evaluation on the data it was trained on (``checkpoint_info``: its checkpoint.json) if there
    is one, else its newest; None when it was never evaluated."""
    found = find_evaluations(eval_bases(run))
    trained = trained_data_root(checkpoint_info) if checkpoint_info else None
    own = pick(found, dataset_ref(trained).id) if trained is not None else None
    return own or (found[0] if found else None)


def pick(summaries: list[EvaluationSummary], dataset_id: str | None = None, split: str | None = None) -> EvaluationSummary | None:
    """The newest evaluation on ``dataset_id`` (and ``split`` when given), None when there is none."""
    return next((s for s in summaries if (dataset_id is None or s.dataset.id == dataset_id)
                 and (split is None or s.split == split)), None)


# -- rows -----------------------------------------------------------------------------------------------------
def at_fpr(m: dict[str, Any], rate: float) -> dict[str, Any]:
    """The operating point calibrated at a healthy false-positive rate ({} when the evaluation has none)."""
    for t in m.get("healthy_fpr_thresholds") or []:
        if isinstance(t, dict) and isinstance(t.get("healthy_fpr"), (int, float)) and abs(t["healthy_fpr"] - rate) < 1e-9:
            return t
    return {}


def summary_row(name: str, m: dict[str, Any]) -> dict[str, Any]:
    """One method's headline metrics (and their intervals) from an evaluation summary."""
    ci = lambda key: m.get(key) or {}  # noqa: E731
    return {
        "method": name, "slice_auroc": m.get("slice_auroc"), "slice_auroc_low": ci("slice_auroc_ci").get("low"),
        "slice_auroc_high": ci("slice_auroc_ci").get("high"), "slice_ap": m.get("slice_ap"),
        "pixel_ap": m.get("pixel_ap"), "pixel_ap_low": ci("pixel_ap_ci").get("low"), "pixel_ap_high": ci("pixel_ap_ci").get("high"),
        "pixel_auroc": m.get("pixel_auroc"), "best_dice": (m.get("best_dice") or {}).get("dice"),
        "dice_at_1pct_fpr": at_fpr(m, 0.01).get("dice"), "dice_at_5pct_fpr": at_fpr(m, 0.05).get("dice"),
        "dice_at_10pct_fpr": at_fpr(m, 0.10).get("dice"),
    }


def _group_words(s: EvaluationSummary) -> str:
    return f"{s.image_size} px, {'+'.join(s.modalities) or '?'}"


def comparison_rows(items: list[tuple[str, EvaluationSummary]]) -> list[dict[str, Any]]:
    """One row per (label, evaluation), then the baselines of each group of evaluations that share the
    same slices, pixels and settings (``baseline_group``).

    Baselines never come from "the first run": each group's baseline numbers are the same whichever of
    its runs supplies them, and groups are ordered by their label, so neither the order of selection nor
    adding a run changes a baseline row. With one group the rows are just "intensity baseline"; with
    several, each is labelled by what sets it apart (working size and channels, else the runs it serves).
    """
    rows = [s.row(label) | {"group": s.baseline_group} for label, s in items]
    groups: dict[tuple, list[tuple[str, EvaluationSummary]]] = {}
    for label, s in items:
        groups.setdefault(s.baseline_group, []).append((label, s))
    words = {g: _group_words(members[0][1]) for g, members in groups.items()}
    clash = {w for w in words.values() if list(words.values()).count(w) > 1}
    named = []
    for g, members in groups.items():
        suffix = ""
        if len(groups) > 1:
            suffix = words[g] if words[g] not in clash else f"{words[g]}, for {', '.join(sorted(lab for lab, _ in members))}"
        named.append((suffix, g, members[0][1]))
    for suffix, g, s in sorted(named, key=lambda t: (t[1][3] or 0, t[0])):
        for b, m in s.baselines.items():  # evaluate writes them in uad.score.BASELINES order
            label = BASELINE_LABELS.get(b, f"{b} baseline") + (f" ({suffix})" if suffix else "")
            rows.append(summary_row(label, m) | {"kind": "baseline", "baseline": b, "group": g})
    return rows


def compare_rows(summaries: list[dict[str, Any]], include_baselines: bool = True) -> list[dict[str, Any]]:
    """Rows for several metrics.json dicts (labelled by model name), baselines per group."""
    rows = comparison_rows([(m.get("model", "?"), EvaluationSummary.from_metrics(m)) for m in summaries])
    return rows if include_baselines else [r for r in rows if r.get("kind") != "baseline"]


def _fmt(v, lo=None, hi=None) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    if f != f:
        return "–"
    ok = lambda x: isinstance(x, (int, float)) and x == x  # noqa: E731
    return f"{f:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if ok(lo) and ok(hi) else "")


COLUMNS = ["method", "slice AUROC [95% CI]", "slice AP", "pixel AP [95% CI]", "pixel AUROC", "best Dice*",
           "Dice @1% FPR", "Dice @5% FPR", "Dice @10% FPR"]
CSV_COLUMNS = ["method", "kind", "slice_auroc", "slice_auroc_low", "slice_auroc_high", "slice_ap", "pixel_ap", "pixel_ap_low",
               "pixel_ap_high", "pixel_auroc", "best_dice", "dice_at_1pct_fpr", "dice_at_5pct_fpr", "dice_at_10pct_fpr"]
TABLE_NOTES = ("95% intervals: patient-level bootstrap. *best Dice picks its threshold on the evaluated labels (an "
               "oracle upper bound). Dice @x% FPR: threshold set where x% of the healthy calibration pixels are "
               "flagged (what a user would deploy).")


def cells(r: dict[str, Any]) -> dict[str, str]:
    """A row as display strings under ``COLUMNS`` (terminal, Markdown, app and HTML report)."""
    return dict(zip(COLUMNS, [
        str(r["method"]), _fmt(r["slice_auroc"], r.get("slice_auroc_low"), r.get("slice_auroc_high")), _fmt(r["slice_ap"]),
        _fmt(r["pixel_ap"], r.get("pixel_ap_low"), r.get("pixel_ap_high")), _fmt(r["pixel_auroc"]), _fmt(r["best_dice"]),
        _fmt(r.get("dice_at_1pct_fpr")), _fmt(r.get("dice_at_5pct_fpr")), _fmt(r.get("dice_at_10pct_fpr"))]))


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal."""
    lines = [list(cells(r).values()) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.append(ORACLE_FOOTNOTE)
    return "\n".join(out)


def markdown_table(rows: list[dict[str, Any]], extra: dict[str, list[str]] | None = None) -> str:
    """The same table in Markdown (for the README); ``extra`` adds columns by header → one cell per row."""
    extra = extra or {}
    header = COLUMNS + list(extra)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for i, r in enumerate(rows):
        out.append("| " + " | ".join(list(cells(r).values()) + [c[i] for c in extra.values()]) + " |")
    return "\n".join(out)


def csv_text(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def overview_cells(summary: EvaluationSummary | None) -> dict[str, Any]:
    """What the Overview table shows of a run's evaluation: where it was evaluated (words) and the headline
    numbers (floats; None when not evaluated, which a table should draw as empty, not 'None')."""
    if summary is None:
        return {"evaluated on": "", "slice AUROC": None, "slice AP": None, "pixel AP": None, "best Dice*": None,
                "Dice @5% FPR": None}
    r = summary_row(summary.model, summary.raw)
    return {"evaluated on": summary.where, "slice AUROC": r["slice_auroc"], "slice AP": r["slice_ap"],
            "pixel AP": r["pixel_ap"], "best Dice*": r["best_dice"], "Dice @5% FPR": r["dice_at_5pct_fpr"]}


# -- configs --------------------------------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def _show(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, list):
        return f"{len(v)} items: {', '.join(map(str, v[:4]))}{', …' if len(v) > 4 else ''}" if len(v) > 6 else ", ".join(map(str, v))
    return str(v)


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, str]]:
    """The configuration keys (dotted paths) whose values differ between two runs: {key, a, b} rows, sorted."""
    fa, fb = _flatten(a or {}), _flatten(b or {})
    return [{"key": k, "a": _show(fa.get(k)), "b": _show(fb.get(k))}
            for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


# -- curves and slices (for figures) ----------------------------------------------------------------------------
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
