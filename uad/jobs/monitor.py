"""The training monitor's runs table: one row per run with its state, its results so far and its
hyper-parameters (training settings and model options), and the filter over it. The Train page draws it.

Values come from the run's folder (config.json, status.json, metrics.jsonl through ``uad.runs.history``), each
checked for its type; a run written before a field existed has an empty cell, never an error.
"""

from __future__ import annotations

import math
from typing import Any

from uad.jobs.run_jobs import RunView
from uad.runs import folders, history

# Columns every row has, in order; model options follow (named like the Train form's), then the tags.
CORE = ("run", "folder", "model", "status", "epochs", "best val loss", "last val loss", "train loss", "slices/s",
        "lr", "batch", "size", "input", "seed", "budget (min)")
HIDDEN_OPTIONS = ("in_channels", "image_size")  # set by the training settings, already in "input" and "size"


def _scalar(v: Any) -> Any:
    """A value a table cell can show: numbers and text as they are, other things as text, None as None."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return v if math.isfinite(v) else None
    return str(v)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def option_label(name: str) -> str:
    """A model option's column: its name as the Train form shows it, kept apart from the core columns."""
    label = str(name).replace("_", " ")
    return f"option {label}" if label in CORE else label


def run_row(v: RunView) -> dict[str, Any]:
    """One run's row (see ``CORE``; model options after)."""
    config = v.info.config if isinstance(v.info.config, dict) else {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    h = history.history(folders.read_metrics(v.path), [])  # epochs only: steps are not in the table
    last = h.last
    main = h.main_loss
    mods = train.get("modalities")
    row: dict[str, Any] = {
        "run": v.name,
        "folder": v.info.name,
        "model": v.info.model,
        "status": v.label,
        "epochs": f"{v.epochs_done}/{v.epochs}" if v.epochs else "",
        "best val loss": h.best_val_loss,
        "last val loss": last.val_loss if last else None,
        # "loss" when the model records one, else the last epoch's first (f-AnoGAN's keys change with its phase)
        "train loss": (last.train.get(main) if main in last.train else next(iter(last.train.values()), None)) if last else None,
        "slices/s": last.slices_per_s if last else None,
        "lr": _number(train.get("lr")),
        "batch": _number(train.get("batch_size")),
        "size": _number(train.get("image_size")),
        "input": "+".join(m for m in mods if isinstance(m, str)) if isinstance(mods, list) else None,
        "seed": _number(train.get("seed")),
        "budget (min)": _number(train.get("max_minutes")),
    }
    options = config.get("hparams") if isinstance(config.get("hparams"), dict) else {}
    for k, value in options.items():
        if k not in HIDDEN_OPTIONS:
            row[option_label(k)] = _scalar(value)
    row["tags"] = " ".join(v.tags)
    return row


def runs_table(views: list[RunView]) -> list[dict[str, Any]]:
    """One row per run (``run_row``), every row with the same columns (a model's options are empty for the others)."""
    rows = [run_row(v) for v in views]
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    order = [c for c in CORE if c in columns] + [c for c in columns if c not in CORE and c != "tags"] + ["tags"]
    return [{c: r.get(c) for c in order} for r in rows]


def matches(v: RunView, text: str = "", models: list[str] | None = None, states: list[str] | None = None) -> bool:
    """Whether a run passes the filter: every word of ``text`` found (case-insensitive) in its name, folder,
    model, tags or note; its model among ``models`` and its status among ``states`` when those are given."""
    if models and v.info.model not in models:
        return False
    if states and v.label not in states:
        return False
    haystack = " ".join([v.name, v.info.name, v.info.model, v.note, *v.tags]).lower()
    return all(word in haystack for word in text.lower().split())
