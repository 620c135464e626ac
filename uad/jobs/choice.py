"""Which run a viewer should open first: never a cancelled, failed or still-running one when a finished
one exists.

``default_run`` starts from ``runs.suggested_checkpoint`` (the shipped checkpoint trained for the kind of
data that is active) and otherwise takes the best completed run, preferring runs trained on the active
folder, ranked by their evaluation's slice AUROC, then by recency. A cancelled run of a third of an epoch
reconstructs noise: it is opened only when the user chooses it, or when nothing else has a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from uad.data import identity
from uad.evaluation import summaries
from uad.runs import listing


def _auroc(info: listing.RunInfo) -> float:
    """Slice AUROC of the run's evaluation on its own training data (any layout uad.report reads)."""
    summary = summaries.home_evaluation(info.path, info.trained_root)
    value = summary.raw.get("slice_auroc") if summary is not None else None
    return float(value) if isinstance(value, (int, float)) else float("-inf")


def default_run(infos: list[listing.RunInfo], demo_active: bool, data_root: str | Path | None = None) -> tuple[listing.RunInfo | None, str]:
    """(the run to open first, why), or (None, why) when ``infos`` is empty.

    ``infos`` are the runs with a checkpoint, newest first as ``runs.list_runs`` gives them.
    """
    if not infos:
        return None, "no run with a checkpoint"
    suggested = listing.suggested_checkpoint(infos, demo_active=demo_active)
    if suggested is not None:
        kind = "the demo cohort" if demo_active else "real scans"
        return suggested, f"the shipped checkpoint for {kind}"
    completed = [i for i in infos if i.state == "completed" and not i.shipped]
    if completed:
        here = [i for i in completed if identity.same_folder((i.config or {}).get("data_root"), data_root)]
        pool = here or completed
        order = {id(i): n for n, i in enumerate(infos)}  # newest first
        best = max(pool, key=lambda i: (_auroc(i), -order[id(i)]))
        where = "trained on this folder" if here else "completed"
        how = f"slice AUROC {_auroc(best):.3f}" if _auroc(best) != float("-inf") else "newest, not evaluated"
        return best, f"the best {where} run ({how})"
    shipped = [i for i in infos if i.shipped]
    if shipped:
        return shipped[0], "a shipped checkpoint"
    return infos[0], f"no completed run: the newest run, {infos[0].state}"


def default_case(cases: list) -> int:
    """Index of the case a viewer opens first: the first labelled one (its tumour outline and Dice are shown), else
    the first."""
    return next((i for i, c in enumerate(cases) if c.labelled), 0)
