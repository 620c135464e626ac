"""One metric vocabulary: the column specs every table is made from (``uad compare``, the app's Compare and
Overview, the HTML report, ``benchmarks/real_bench.py`` and the README tables).

A ``Column`` says where a number comes from in an evaluation's metrics (``get``), how it is called, how
many digits it shows and which keys hold its interval. The healthy-FPR columns are built from the one list
of rates (``uad.scoring.recipe.FPR_RATES``), so adding a rate adds a column everywhere.

The threshold families, by name (the same words in the app, the report and the CLI):
* **calibrated thresholds**: where a rate of the healthy calibration pixels is flagged (label-free, deployable);
* **oracle threshold**: the one that maximises Dice on the evaluated labels (best Dice*, an upper bound);
* **slice thresholds**: Youden's J and best F1 on slice scores (also chosen on the evaluated labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from uad.evaluation.summaries import BASELINE_LABELS, EvaluationSummary, operating_point
from uad.scoring.recipe import CASE_RATE, FPR_RATES, rate_label

ORACLE_FOOTNOTE = "* best Dice is an oracle: its threshold was chosen on the evaluated labels."
TABLE_NOTES = ("95 % intervals: patient-level bootstrap. *best Dice picks its threshold on the evaluated labels (an "
               "oracle upper bound). Dice @x % FPR: at the calibrated threshold where x % of the healthy calibration "
               "pixels are flagged (what a user would deploy).")


def number(v: Any) -> float | None:
    """A finite float, or None for anything else (missing, null, NaN, text)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def fmt(v: Any, digits: int = 3, low: Any = None, high: Any = None) -> str:
    """'0.912', '0.912 [0.880, 0.940]' or '–' (missing or undefined)."""
    f = number(v)
    if f is None:
        return "–"
    lo, hi = number(low), number(high)
    return f"{f:.{digits}f}" + (f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None else "")


@dataclass(frozen=True)
class Column:
    """One column: its key in a row (and the CSV), its header, where its value comes from, how it is shown."""

    key: str
    label: str
    get: Callable[[dict], Any] = field(compare=False)
    digits: int = 3
    interval: tuple[str, str] | None = None  # keys of the 95 % interval's ends in a row
    get_interval: Callable[[dict], tuple[Any, Any]] | None = field(default=None, compare=False)
    help: str = ""

    @property
    def short(self) -> str:
        """The header without the interval's mention, for tables that show the value alone (Overview)."""
        return self.label.replace(" [95% CI]", "")

    def cell(self, row: dict[str, Any]) -> str:
        low, high = (row.get(self.interval[0]), row.get(self.interval[1])) if self.interval else (None, None)
        return fmt(row.get(self.key), self.digits, low, high)


def _ci(key: str) -> Callable[[dict], tuple[Any, Any]]:
    def get(m: dict) -> tuple[Any, Any]:
        ci = m.get(key) if isinstance(m.get(key), dict) else {}
        return ci.get("low"), ci.get("high")
    return get


def dice_key(rate: float) -> str:
    """``dice_at_5pct_fpr``: the row key of Dice at the threshold calibrated for healthy FPR ``rate``."""
    return f"dice_at_{float(rate) * 100:g}pct_fpr"


def _best_dice(m: dict) -> Any:
    b = m.get("best_dice")
    return b.get("dice") if isinstance(b, dict) else None


METRICS: tuple[Column, ...] = (
    Column("slice_auroc", "slice AUROC [95% CI]", lambda m: m.get("slice_auroc"), interval=("slice_auroc_low", "slice_auroc_high"),
           get_interval=_ci("slice_auroc_ci"), help="Tumour vs healthy slices, by slice score"),
    Column("slice_ap", "slice AP", lambda m: m.get("slice_ap")),
    Column("pixel_ap", "pixel AP [95% CI]", lambda m: m.get("pixel_ap"), interval=("pixel_ap_low", "pixel_ap_high"),
           get_interval=_ci("pixel_ap_ci"), help="Average precision over every pixel inside the eroded brain mask"),
    Column("pixel_auroc", "pixel AUROC", lambda m: m.get("pixel_auroc")),
    Column("best_dice", "best Dice*", _best_dice, help="At the oracle threshold chosen on the evaluated labels"),
    *(Column(dice_key(r), f"Dice @{rate_label(r)} FPR", lambda m, r=r: operating_point(m, r).get("dice"),
             help=f"At the calibrated threshold where {rate_label(r)} of healthy calibration pixels are flagged")
      for r in FPR_RATES),
)
# Overview's headline columns: slice and pixel level, the literature's oracle Dice and the deployable one. Few
# enough to fit beside the run and its dataset at 1280 px; every other number is on Compare.
OVERVIEW = ("slice_auroc", "pixel_ap", "best_dice", dice_key(CASE_RATE))


def column(key: str) -> Column:
    return next(c for c in METRICS if c.key == key)


def summary_row(name: str, m: dict[str, Any]) -> dict[str, Any]:
    """One method's row: its label, then every column's value (and interval ends) from its metrics."""
    row: dict[str, Any] = {"method": name}
    for c in METRICS:
        row[c.key] = number(c.get(m))
        if c.interval and c.get_interval:
            low, high = c.get_interval(m)
            row[c.interval[0]], row[c.interval[1]] = number(low), number(high)
    return row


def header() -> list[str]:
    return ["method"] + [c.label for c in METRICS]


def cells(r: dict[str, Any]) -> dict[str, str]:
    """A row as display strings under ``header()`` (terminal, Markdown, app and HTML report)."""
    return {"method": str(r["method"]), **{c.label: c.cell(r) for c in METRICS}}


def csv_header() -> list[str]:
    out = ["method", "kind"]
    for c in METRICS:
        out += [c.key, *(c.interval or ())]
    return out


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
    rows = [summary_row(label or s.model, s.raw) | {"kind": "model", "group": s.baseline_group} for label, s in items]
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
        for b, m in s.baselines.items():  # evaluate writes them in uad.scoring.scorers.BASELINES order
            label = BASELINE_LABELS.get(b, f"{b} baseline") + (f" ({suffix})" if suffix else "")
            rows.append(summary_row(label, m) | {"kind": "baseline", "baseline": b, "group": g})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal."""
    head = header()
    lines = [list(cells(r).values()) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.append(ORACLE_FOOTNOTE)
    return "\n".join(out)


def markdown_table(rows: list[dict[str, Any]], extra: dict[str, list[str]] | None = None) -> str:
    """The same table in Markdown (for the README); ``extra`` adds columns by header → one cell per row."""
    extra = extra or {}
    head = header() + list(extra)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for i, r in enumerate(rows):
        out.append("| " + " | ".join(list(cells(r).values()) + [c[i] for c in extra.values()]) + " |")
    return "\n".join(out)


def csv_text(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_header(), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def overview_cells(summary: EvaluationSummary | None) -> dict[str, Any]:
    """What the Overview table shows of a run's evaluation: where it was evaluated (words) and the headline
    numbers (floats; None when not evaluated, which a table should draw as empty, not 'None')."""
    row = summary_row(summary.model, summary.raw) if summary is not None else {}
    return {"evaluated on": summary.where if summary is not None else "",
            **{column(k).short: row.get(k) for k in OVERVIEW}}


# -- operating points at the calibrated thresholds ----------------------------------------------------------------
OPERATING: tuple[Column, ...] = (
    Column("threshold", "threshold", lambda t: t.get("threshold"), digits=4),
    Column("dice", "Dice", lambda t: t.get("dice")),
    Column("precision", "precision", lambda t: t.get("precision")),
    Column("recall", "recall", lambda t: t.get("recall")),
    Column("calibration_fpr", "FPR on calibration pixels", lambda t: t.get("calibration_fpr"), digits=4,
           help="The healthy FPR the threshold reached on the pixels it was calibrated on (at most the nominal rate)"),
    Column("reached_fpr", "FPR reached here", lambda t: t.get("reached_fpr"), digits=4,
           help="The fraction of the evaluated patients' tumour-free slices' pixels it flags"),
)


def operating_rows(m: dict[str, Any]) -> list[dict[str, str]]:
    """One row per calibrated threshold: 'healthy FPR' (nominal) and the ``OPERATING`` columns, as text."""
    out = []
    for rate in FPR_RATES:
        t = operating_point(m, rate)
        if t:
            out.append({"healthy FPR": rate_label(rate), **{c.label: c.cell({c.key: c.get(t)}) for c in OPERATING}})
    return out


# -- the per-case table (cases.csv) -------------------------------------------------------------------------------
CASES: tuple[Column, ...] = (
    Column("dice", f"Dice @{rate_label(CASE_RATE)} FPR", lambda r: r.get("dice"),
           help=f"Dice at the calibrated threshold where {rate_label(CASE_RATE)} of healthy calibration pixels are flagged"),
    Column("precision", "precision", lambda r: r.get("precision")),
    Column("recall", "recall", lambda r: r.get("recall")),
    Column("tumour_ml", "tumour mL", lambda r: r.get("tumour_ml"), digits=2,
           help="Labelled tumour volume in the kept slices, from the voxel spacing"),
    Column("detected_ml", "detected mL", lambda r: r.get("detected_ml"), digits=2,
           help="Volume flagged inside the brain mask at the threshold"),
    Column("slice_auroc", "slice AUROC", lambda r: r.get("slice_auroc"),
           help="Within the case: tumour vs healthy slices (empty when it has only one kind)"),
    Column("slices", "slices", lambda r: r.get("slices"), digits=0),
    Column("tumour_slices", "tumour slices", lambda r: r.get("tumour_slices"), digits=0),
    Column("max_slice_score", "max slice score", lambda r: r.get("max_slice_score"), digits=4),
)
