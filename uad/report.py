"""Evaluation summaries as comparison rows and tables: one shaping of the metrics for the CLI, benchmarks and app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORACLE_FOOTNOTE = "* best Dice is an oracle: its threshold was chosen on the evaluated labels."


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
    }


def compare_rows(summaries: list[dict[str, Any]], include_baselines: bool = True) -> list[dict[str, Any]]:
    """Rows for several evaluated models, then the first summary's baselines."""
    rows = [summary_row(m["model"], m) for m in summaries]
    if include_baselines and summaries:
        rows += [summary_row(f"baseline:{b}", m) for b, m in summaries[0].get("baselines", {}).items()]
    return rows


def _fmt(v, lo=None, hi=None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


_COLUMNS = ["method", "slice AUROC [95% CI]", "slice AP", "pixel AP [95% CI]", "pixel AUROC", "best Dice*",
            "Dice @ 1% FPR", "Dice @ 5% FPR"]


def _cells(r: dict[str, Any]) -> list[str]:
    return [r["method"], _fmt(r["slice_auroc"], r["slice_auroc_low"], r["slice_auroc_high"]), _fmt(r["slice_ap"]),
            _fmt(r["pixel_ap"], r["pixel_ap_low"], r["pixel_ap_high"]), _fmt(r["pixel_auroc"]), _fmt(r["best_dice"]),
            _fmt(r["dice_at_1pct_fpr"]), _fmt(r["dice_at_5pct_fpr"])]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal."""
    lines = [_cells(r) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(_COLUMNS, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(_COLUMNS, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.append(ORACLE_FOOTNOTE)
    return "\n".join(out)


def markdown_table(rows: list[dict[str, Any]], extra: dict[str, list[str]] | None = None) -> str:
    """The same table in Markdown (for the README); ``extra`` adds columns by header → one cell per row."""
    extra = extra or {}
    header = _COLUMNS + list(extra)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for i, r in enumerate(rows):
        out.append("| " + " | ".join(_cells(r) + [cells[i] for cells in extra.values()]) + " |")
    return "\n".join(out)


def load_evaluation(folder: str | Path) -> dict[str, Any]:
    """An evaluation folder written by ``uad evaluate``: {"metrics", "curves", "slices" (labelled slices,
    a DataFrame)}, or {"error": why} when it cannot be read or holds nothing to compare."""
    import numpy as np
    import pandas as pd

    from uad import fileio

    f = Path(folder)
    try:
        metrics = fileio.read_json(f / "metrics.json")
        curves = fileio.read_json(f / "curves.json")
        slices = pd.read_csv(f / "slices.csv")
    except (OSError, ValueError) as exc:
        return {"error": f"{folder}: unreadable evaluation ({exc})"}
    if not isinstance(metrics, dict) or not isinstance(curves, dict) or not {"label", "score"} <= set(slices.columns):
        return {"error": f"{folder}: not a uad evaluation (metrics.json, curves.json or slices.csv has the wrong shape)"}
    slices = slices[pd.to_numeric(slices["label"], errors="coerce").notna()].copy()  # unlabelled cases have no label
    slices["label"] = slices["label"].astype(int)
    slices["score"] = pd.to_numeric(slices["score"], errors="coerce")
    slices = slices[np.isfinite(slices["score"])]
    if slices.empty or slices.label.nunique() < 2:
        return {"error": f"{folder}: the evaluation has no labelled slices of both kinds (healthy and tumour) to compare"}
    return {"metrics": metrics, "curves": curves, "slices": slices}
