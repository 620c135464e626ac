"""Paired differences between two methods scored on the same patients, slices and pixels.

For any two methods (two runs, a run and a baseline, an ensemble and its members) evaluated on the same
cases: the difference in slice AUROC, pixel AP and Dice at each calibrated healthy-FPR threshold, with a
95 % patient-level **paired** bootstrap interval (each resample draws patients once and computes both
methods on it), and whether that interval excludes zero. Every single-method interval in uad uses the same
resamples for the same seed and cases.

Inputs are per-case arrays: a ``cohort.Tally`` in memory, or ``cases.npz`` that ``uad evaluate`` writes
beside ``metrics.json`` (one group of arrays per scorer: the model and both baselines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uad.core.errors import ConfigError
from uad.evaluation import metrics
from uad.scoring.recipe import rate_label

METRICS = ("slice_auroc", "pixel_ap")  # then dice_at_<rate> for every calibrated rate
MIN_CASES = 5  # fewer patients than this: a bootstrap interval says nothing, so no difference is called


@dataclass
class CaseArrays:
    """One method's per-case data, cases in sorted-id order (the order every bootstrap here resamples in)."""

    cases: list[str]
    pos: np.ndarray  # (C, B) tumour-pixel histogram per case
    neg: np.ndarray  # (C, B) healthy-pixel histogram per case
    counts: np.ndarray  # (C, R, 3) [tp, fp, fn] at each calibrated threshold
    rates: np.ndarray  # (R,)
    slice_cases: np.ndarray
    slice_labels: np.ndarray
    slice_scores: np.ndarray

    @classmethod
    def from_tally(cls, t) -> "CaseArrays":
        order = np.argsort(t.case_order)
        return cls([t.case_order[i] for i in order], np.stack(t.case_pos)[order], np.stack(t.case_neg)[order],
                   np.stack(t.case_counts)[order], np.asarray([th["rate"] for th in t.thresholds], float),
                   np.asarray(t.case_ids), np.concatenate(t.labels), np.concatenate(t.scores))

    @classmethod
    def read(cls, path: str | Path, name: str) -> "CaseArrays":
        """Scorer ``name``'s arrays from a ``cases.npz``; a ValueError naming the file when missing or malformed."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                get = {k: z[f"{name}/{k}"] for k in ("cases", "pos", "neg", "counts", "rates", "slice_cases",
                                                      "slice_labels", "slice_scores")}
        except FileNotFoundError:
            raise ValueError(f"{path}: no per-case arrays (the evaluation predates them: evaluate again)") from None
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable per-case arrays for {name} ({exc})") from None
        cases = [str(c) for c in get["cases"]]
        order = np.argsort(cases)
        c = len(cases)
        if get["pos"].shape[0] != c or get["neg"].shape != get["pos"].shape or get["counts"].shape[:1] != (c,) \
                or len(get["slice_labels"]) != len(get["slice_scores"]) or len(get["slice_cases"]) != len(get["slice_scores"]):
            raise ValueError(f"{path}: per-case arrays of {name} do not agree in size")
        return cls([cases[i] for i in order], get["pos"][order], get["neg"][order], get["counts"][order],
                   get["rates"].astype(float), get["slice_cases"].astype(str), get["slice_labels"].astype(np.int64),
                   get["slice_scores"].astype(float))


@dataclass(frozen=True)
class Difference:
    """A − B for one metric on the same patients, with its paired 95 % interval."""

    metric: str
    label: str
    a: float
    b: float
    diff: float
    low: float
    high: float
    n_used: int
    n_cases: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.n_cases >= MIN_CASES and np.isfinite(self.low) and np.isfinite(self.high)
                    and (self.low > 0 or self.high < 0))

    @property
    def verdict(self) -> str:
        """'A better', 'B better' (the interval excludes 0), 'no clear difference', or too few patients to tell."""
        if self.n_cases < MIN_CASES:
            return f"{self.n_cases} patient{'s' if self.n_cases != 1 else ''}: too few to tell"
        if not self.excludes_zero:
            return "no clear difference"
        return "A better" if self.low > 0 else "B better"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "label": self.label, "a": self.a, "b": self.b, "diff": self.diff,
                "low": self.low, "high": self.high, "n_used": self.n_used, "n_cases": self.n_cases,
                "excludes_zero": self.excludes_zero}


def _dice(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / den, np.nan)


def paired_differences(a: CaseArrays, b: CaseArrays, n_boot: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> list[Difference]:
    """A − B in slice AUROC, pixel AP and Dice at each calibrated rate, with paired patient-bootstrap intervals.

    Refuses (ConfigError) two methods not scored on the same cases and slices: a paired difference is only
    meaningful on identical data."""
    if a.cases != b.cases:
        raise ConfigError("a paired difference needs both methods scored on the same patients; "
                          f"they differ in {sorted(set(a.cases) ^ set(b.cases))[:5]}")
    if len(a.slice_labels) != len(b.slice_labels) or not np.array_equal(a.slice_labels, b.slice_labels) \
            or not np.array_equal(a.slice_cases, b.slice_cases):
        raise ConfigError("a paired difference needs both methods scored on the same slices; these differ")
    n = len(a.cases)
    out = []
    ids, pa, na = metrics.rank_histograms(a.slice_cases, a.slice_labels, a.slice_scores)
    _, pb, nb = metrics.rank_histograms(b.slice_cases, b.slice_labels, b.slice_scores)
    auroc = metrics.SUMMED_STATS["auroc"]
    r = metrics.paired_bootstrap(lambda w: auroc(w @ pa, w @ na), lambda w: auroc(w @ pb, w @ nb), n, n_boot, seed, alpha)
    out.append(Difference("slice_auroc", "slice AUROC", **{k: r[k] for k in ("a", "b", "diff", "low", "high", "n_used")}, n_cases=n))
    ap = metrics.SUMMED_STATS["ap"]
    pos_a, neg_a, pos_b, neg_b = (x.astype(np.float64) for x in (a.pos, a.neg, b.pos, b.neg))
    r = metrics.paired_bootstrap(lambda w: ap(w @ pos_a, w @ neg_a), lambda w: ap(w @ pos_b, w @ neg_b), n, n_boot, seed, alpha)
    out.append(Difference("pixel_ap", "pixel AP", **{k: r[k] for k in ("a", "b", "diff", "low", "high", "n_used")}, n_cases=n))
    for i, rate in enumerate(a.rates):
        j = np.flatnonzero(np.isclose(b.rates, rate))
        if not len(j):
            continue
        ca, cb = a.counts[:, i, :].astype(np.float64), b.counts[:, int(j[0]), :].astype(np.float64)
        r = metrics.paired_bootstrap(lambda w: _dice(w @ ca), lambda w: _dice(w @ cb), n, n_boot, seed, alpha)
        out.append(Difference(f"dice_at_{rate * 100:g}pct_fpr", f"Dice @{rate_label(rate)} FPR",
                              **{k: r[k] for k in ("a", "b", "diff", "low", "high", "n_used")}, n_cases=n))
    return out


def difference_rows(name_a: str, name_b: str, diffs: list[Difference]) -> list[dict[str, str]]:
    """One row per metric, as every table of paired differences shows them (CLI, app, report)."""
    return [{"A": name_a, "B": name_b, "metric": d.label, "A value": f"{d.a:.3f}", "B value": f"{d.b:.3f}",
             "A − B [95% paired CI]": f"{d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}]",
             "verdict": {"A better": f"{name_a} better", "B better": f"{name_b} better"}.get(d.verdict, d.verdict),
             "patients": f"{d.n_used} of {d.n_cases}"} for d in diffs]


def format_differences(name_a: str, name_b: str, diffs: list[Difference]) -> str:
    """A plain-text table: metric, A, B, A − B [95 % paired CI], verdict."""
    head = ["metric", name_a, name_b, "A − B [95% paired CI]", ""]
    rows = [[r["metric"], r["A value"], r["B value"], r["A − B [95% paired CI]"], r["verdict"]]
            for r in difference_rows(name_a, name_b, diffs)]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head, *rows])


BASELINE_FOR_PAIRS = "intensity"  # the bar every learned model must clear at the pixel level


def case_arrays(summary, name: str | None = None) -> CaseArrays:
    """The per-case arrays of an evaluation (``summaries.EvaluationSummary``) for its model or a baseline."""
    if summary.folder is None:
        raise ValueError("this evaluation has no folder: no per-case arrays")
    return CaseArrays.read(summary.folder / "cases.npz", name or summary.model)


def evaluation_pairs(items: list[tuple[str, Any]], n_boot: int | None = None,
                     seed: int = 0) -> tuple[list[tuple[str, str, list[Difference]]], list[str]]:
    """Paired differences among evaluated methods, for tables: each model against the intensity baseline of its
    own evaluation, and, among models scored on the same slices, each against the best of them by pixel AP.

    ``items``: (label, EvaluationSummary). Returns ([(label A, label B, differences)], notes on what could not
    be paired and why)."""
    out, notes, arrays = [], [], {}
    for label, s in items:
        try:
            arrays[label] = (case_arrays(s), case_arrays(s, BASELINE_FOR_PAIRS), s)
        except ValueError as exc:
            notes.append(f"{label}: {exc}")
    for label, (model, base, s) in arrays.items():
        boot = n_boot or int((s.raw.get("bootstrap") or {}).get("n_boot") or 1000) or 1000
        out.append((label, "intensity baseline", paired_differences(model, base, boot, seed)))
    groups: dict[tuple, list[str]] = {}
    for label, (_, _, s) in arrays.items():
        groups.setdefault(s.baseline_group, []).append(label)
    for members in groups.values():
        if len(members) < 2:
            continue
        best = max(members, key=lambda m: arrays[m][2].raw.get("pixel_ap") or float("-inf"))
        for label in members:
            if label != best:
                boot = n_boot or int((arrays[label][2].raw.get("bootstrap") or {}).get("n_boot") or 1000) or 1000
                try:
                    out.append((label, best, paired_differences(arrays[label][0], arrays[best][0], boot, seed)))
                except ConfigError as exc:
                    notes.append(f"{label} vs {best}: {exc}")
    return out, notes
