"""One metric vocabulary: the column spec every table is made from (CLI, app, HTML report, README scripts)."""

from __future__ import annotations

from typing import Any

from uad.evaluation.summaries import BASELINE_LABELS, EvaluationSummary, at_fpr

ORACLE_FOOTNOTE = "* best Dice is an oracle: its threshold was chosen on the evaluated labels."


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
        for b, m in s.baselines.items():  # evaluate writes them in uad.score.BASELINES order
            label = BASELINE_LABELS.get(b, f"{b} baseline") + (f" ({suffix})" if suffix else "")
            rows.append(summary_row(label, m) | {"kind": "baseline", "baseline": b, "group": g})
    return rows


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

