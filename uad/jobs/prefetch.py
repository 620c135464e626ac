"""Explore's opening view computed ahead, while the researcher is still on another page.

The app starts ``explore_opening`` in a background thread once it has drawn its first page: the run and case
Explore opens with (``uad.jobs.choice``) are scored with the recipe Explore uses (``eval_jobs.viewer_recipe``)
and kept in the maps cache (``uad.scoring.cache``). The first visit to Explore then reads them instead of
computing them; a visit that comes before the prefetch is done waits for it (one computation, not two: the
cache locks each entry). Nothing is shown or decided here that Explore does not decide the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from uad.data.cases import Case, discover_cases
from uad.jobs import choice, eval_jobs, run_jobs
from uad.runs import listing
from uad.scoring.recipe import ScoringRecipe

log = logging.getLogger("uad.prefetch")


@dataclass(frozen=True)
class Opening:
    run: run_jobs.RunView
    case: Case
    recipe: ScoringRecipe


def opening(root: str | Path, demo_active: bool) -> Opening | None:
    """What Explore shows first on ``root``: the default run with a checkpoint, the default case and the
    recipe Explore scores with; None when there is no run with a checkpoint, no case or no readable recipe."""
    # The runs as Explore lists them, read only: no housekeeping here (finishing an interrupted delete is the
    # pages' job, which say so).
    views = [v for v in map(run_jobs.run_view, listing.list_runs(include_shipped=True)) if v.has_checkpoint]
    run, _ = choice.default_run([v.info for v in views], demo_active=demo_active, data_root=root)
    cases, _ = discover_cases(root)
    if run is None or not cases:
        return None
    view = next(v for v in views if v.info is run)
    try:
        recipe, _ = eval_jobs.viewer_recipe(view, root)
    except ValueError:
        return None  # Explore says why when it is opened
    return Opening(view, cases[choice.default_case(cases)], recipe)


def explore_opening(root: str | Path, demo_active: bool) -> Opening | None:
    """Compute (or find) the maps of Explore's opening view on ``root`` into the disk caches; returns what was
    prefetched. Any failure is left for Explore to report when it is opened."""
    from uad.checkpoints import weights
    from uad.scoring import cache

    try:
        got = opening(root, demo_active)
        if got is None:
            return None
        checkpoint = weights.load(got.run.path)
        if any(m not in got.case.modalities for m in checkpoint.preprocess.modalities):
            return None
        working = cache.working_case(root, got.case, checkpoint.preprocess)
        cache.viewer_maps(checkpoint, working, got.recipe, got.case)
        return got
    except Exception as exc:  # noqa: BLE001 - a prefetch that fails only costs the time it saves
        log.info("prefetch of Explore's opening view on %s failed: %s", root, exc)
        return None
