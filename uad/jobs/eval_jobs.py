"""Evaluations as jobs: ``uad evaluate`` of a run on a dataset, started in the background and watched from its folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from uad.core import fileio, paths, processes
from uad.data import identity
from uad.evaluation import summaries
from uad.jobs.background import launch_info, reap, start_process, tail
from uad.jobs.run_jobs import RunView
from uad.scoring.recipe import ScoringRecipe

# One evaluation = one run on one dataset and split, in <eval base>/<dataset-id>/<split>/ (uad.report).
# A background evaluation keeps launch.json, eval.log and progress.json in that same folder.
EVAL_LAUNCH = "launch.json"


EVAL_LOG = "eval.log"


def evaluations(v: RunView) -> list[summaries.EvaluationSummary]:
    """Every readable evaluation of the run, newest first."""
    return summaries.find_evaluations(summaries.eval_bases(v.path))


def evaluation_on(v: RunView, root: str | Path, split: str | None = None) -> summaries.EvaluationSummary | None:
    """The run's newest evaluation on the dataset at ``root`` (any split unless given), None when none."""
    return summaries.pick(evaluations(v), identity.dataset_ref(root).id, split)


def viewer_recipe(v: RunView, root: str | Path) -> tuple[ScoringRecipe, summaries.EvaluationSummary | None]:
    """The scoring recipe a viewer scores ``v`` with on ``root``, and the evaluation it comes from: the recipe of
    the run's evaluation on that folder (whose thresholds the viewer offers as presets), else the default recipe
    (None: no evaluation there). Raises ValueError when that evaluation's recipe is unreadable."""
    summary = evaluation_on(v, root)
    return (summary.recipe, summary) if summary is not None else (ScoringRecipe(), None)


def trained_root(v: RunView) -> Path | None:
    """The folder the run's checkpoint was trained on (its record, read without torch)."""
    return v.info.trained_root


def eval_split(v: RunView, root: str | Path) -> str:
    """The split an evaluation on ``root`` uses: the recorded test patients on the run's own training data,
    every case ("all", thresholds calibrated on that cohort's own healthy slices) on any other folder."""
    trained = trained_root(v)
    return "test" if identity.same_folder(trained, root) else "all"


def eval_out(v: RunView, root: str | Path, split: str | None = None) -> Path:
    """Where an evaluation of the run on ``root`` is (or will be) written."""
    return summaries.eval_folder(summaries.write_base(v.path), identity.dataset_ref(root), split or eval_split(v, root))


def launch_eval(v: RunView, root: str | Path | None = None, split: str | None = None) -> Path:
    """Start ``uad evaluate --run <run> --data <root> --split <split> --out <folder>`` in the background;
    returns the output folder (progress.json, eval.log, then metrics.json appear there)."""
    root = Path(root) if root is not None else (trained_root(v) or paths.demo_dir())
    split = split or eval_split(v, root)
    out = eval_out(v, root, split)
    out.mkdir(parents=True, exist_ok=True)
    (out / "progress.json").unlink(missing_ok=True)  # a previous run's "done" must not read as this one's
    argv = ["evaluate", "--run", str(v.path), "--data", str(root), "--split", split, "--out", str(out)]
    start_process(f"eval:{out}", argv, out / EVAL_LOG, out / EVAL_LAUNCH)
    return out


@dataclass
class EvalJob:
    """An evaluation of a run on one dataset as seen from its folder: 'done', 'running', 'failed' or 'none',
    with progress (cases done / total in the current phase) and the log's tail."""

    state: str
    out: Path
    phase: str = ""
    done: int = 0
    total: int = 0
    log: str = ""

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0

    @property
    def text(self) -> str:
        if self.phase == "preparing":
            return "preparing the slice cache…"
        if self.phase == "calibrating":
            return f"calibrating thresholds on healthy slices: {self.done} / {self.total}"
        if self.phase == "scoring":
            return f"scoring cases: {self.done} / {self.total}"
        if self.phase == "summarising":
            return "computing metrics and bootstrap intervals…"
        return "starting…"


def eval_job(v: RunView, root: str | Path, split: str | None = None) -> EvalJob:
    """The state of the run's evaluation on ``root`` (see EvalJob)."""
    reap()
    out = eval_out(v, root, split)
    launch = launch_info(out / EVAL_LAUNCH)
    metrics = out / "metrics.json"
    if launch and _alive(launch):
        prog = launch_info(out / "progress.json")
        return EvalJob("running", out, str(prog.get("phase") or ""), int(prog.get("done") or 0), int(prog.get("total") or 0),
                       tail(out / EVAL_LOG, 3))
    if metrics.is_file() and (not launch or fileio.mtime(metrics) >= launch.get("started", 0)):
        return EvalJob("done", out)
    if launch:
        return EvalJob("failed", out, log=tail(out / EVAL_LOG))
    if evaluation_on(v, root, split) is not None:  # e.g. an older layout, or written by the CLI elsewhere
        return EvalJob("done", out)
    return EvalJob("none", out)


def _alive(launch: dict) -> bool:
    """The evaluation process launch.json names is alive and is still that process (same start time)."""
    pid, start = launch.get("pid"), launch.get("pid_start")
    if not processes.pid_alive(pid):
        return False
    return start is None or processes.process_start(pid) in (None, start)


def home_evaluation(v: RunView) -> summaries.EvaluationSummary | None:
    """The evaluation on the run's own training data if there is one, else its newest."""
    return summaries.home_evaluation(v.path, v.info.trained_root)

