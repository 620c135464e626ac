"""Background jobs: ``python -m uad ...`` started as a separate process, cancelled, resumed, and the state a
run or an evaluation is in as seen from its folder and its process.

The app and the CLI both call this, so they cannot disagree about what "running", "failed" or "cancelled"
means. A job's whole state lives on disk (``status.json`` written by the trainer, ``launch.json`` written
here), so every browser tab, every app restart and ``python -m uad runs`` see the same thing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uad import fileio, paths, report, runs

LAUNCH = "launch.json"  # beside status.json: pid of the process started here, its command line and log
STDOUT = "stdout.log"
CKPT_META = "checkpoint.json"  # = uad.checkpoints.META; not imported so listing runs does not import torch

# Processes this interpreter started. Polling them reaps finished ones: a zombie looks alive to kill(0).
_children: dict[str, subprocess.Popen] = {}
_children_lock = threading.Lock()


def reap() -> None:
    with _children_lock:
        for key, proc in list(_children.items()):
            if proc.poll() is not None:
                _children.pop(key, None)


def start_process(key: str, argv: list[str], log_path: Path, info_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m uad <argv>`` in its own session (so cancel can signal its whole process group),
    its output appended to ``log_path`` (never an unread pipe), and record its pid in ``info_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uad", *argv], cwd=paths.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env or os.environ.copy())
    with _children_lock:
        _children[key] = proc
    fileio.write_json(info_path, {"pid": proc.pid, "argv": argv, "started": time.time(), "log": log_path.name})
    return proc


def launch_info(path: Path) -> dict[str, Any]:
    try:
        info = fileio.read_json(path)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def process_running(info_path: Path) -> bool:
    """Whether the process recorded in ``info_path`` (by ``start_process``) is still alive."""
    reap()
    info = launch_info(info_path)
    return bool(info) and runs.pid_alive(info.get("pid"))


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log (progress bars' carriage returns read as line breaks)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(fh.tell() - 8000, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


# -- training runs ---------------------------------------------------------------------------------------
def launch_train(args: list[str], model: str, run_dir: Path | None = None) -> Path:
    """Start ``uad train`` in the background in a new run folder; returns the folder."""
    run_dir = run_dir or runs.new_run_dir(model)
    runs.write_status(run_dir, "queued", model=model, queued=time.time())
    start_process(str(run_dir), ["train", *args, "--out", str(run_dir), "--no-progress"], run_dir / STDOUT, run_dir / LAUNCH)
    return run_dir


def resume_run(run_dir: Path, epochs: int | None = None) -> None:
    """Continue a stopped run from its last checkpoint in the background (optionally to a new epoch total)."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} no longer exists")
    argv = ["train", "--resume", str(run_dir), "--no-progress"]
    if epochs:
        argv += ["--epochs", str(epochs)]
    runs.write_status(run_dir, "queued", queued=time.time(), error=None)
    start_process(str(run_dir), argv, run_dir / STDOUT, run_dir / LAUNCH)


def cancel_run(run_dir: Path) -> str:
    """SIGTERM the run's process group; the trainer saves a checkpoint and records 'cancelled'."""
    if not run_dir.is_dir():
        return f"{run_dir.name} no longer exists."
    status = runs.read_status(run_dir) or {}
    pid = status.get("pid") if status.get("state") == "running" else launch_info(run_dir / LAUNCH).get("pid")
    if not runs.pid_alive(pid):
        runs.write_status(run_dir, "cancelled", finished=time.time(), reason="no live process when cancelled")
        return "The run had no live process; marked cancelled."
    try:
        os.killpg(int(pid), signal.SIGTERM)
    except (ProcessLookupError, PermissionError) as exc:
        return f"Could not signal process {pid}: {exc}"
    time.sleep(0.3)
    if (runs.read_status(run_dir) or {}).get("state") == "queued":
        # Killed before the trainer installed its handler: nobody else will record it.
        runs.write_status(run_dir, "cancelled", finished=time.time(), reason="cancelled before training started")
    return "Cancel requested: the run saves a checkpoint and stops."


@dataclass
class RunView:
    """A run's state as seen from its folder and its process: what the app and ``uad runs`` show."""

    info: runs.RunInfo
    state: str
    epoch: int
    epochs: int
    error: str | None
    log: str

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def progress(self) -> float:
        return min(self.epoch / self.epochs, 1.0) if self.epochs else 0.0

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def has_checkpoint(self) -> bool:
        return any((self.path / sub / CKPT_META).is_file() for sub in ("best", "last", "."))

    @property
    def resumable(self) -> bool:
        return not self.info.shipped and not self.active and (self.path / "last" / CKPT_META).is_file()


def run_view(info: runs.RunInfo) -> RunView:
    status = info.status
    state = info.state
    error = status.get("error")
    if state == "queued":
        launch = launch_info(info.path / LAUNCH)
        if launch and not runs.pid_alive(launch.get("pid")):
            state, error = "failed", "the training process exited before it started (see its output below)"
    elif state == "failed" and status.get("state") == "running":
        error = "the training process died without recording an error (killed? out of memory?)"
    if info.shipped and not status:
        state = "shipped"
    epochs = int(status.get("epochs") or (info.config.get("train") or {}).get("epochs") or 0)
    log = ""
    if state == "failed":
        log = tail(info.path / STDOUT) or tail(info.path / "train.log")
    return RunView(info, state, int(status.get("epoch") or 0), epochs, error, log)


def list_run_views(include_shipped: bool = True) -> list[RunView]:
    reap()
    return [run_view(r) for r in runs.list_runs(include_shipped=include_shipped)]


# -- evaluations -----------------------------------------------------------------------------------------
# One evaluation = one run on one dataset and split, in <eval base>/<dataset-id>/<split>/ (uad.report).
# A background evaluation keeps launch.json, eval.log and progress.json in that same folder.
EVAL_LAUNCH = "launch.json"
EVAL_LOG = "eval.log"


def evaluations(v: RunView) -> list[report.EvaluationSummary]:
    """Every readable evaluation of the run, newest first."""
    return report.find_evaluations(report.eval_bases(v.path))


def evaluation_on(v: RunView, root: str | Path, split: str | None = None) -> report.EvaluationSummary | None:
    """The run's newest evaluation on the dataset at ``root`` (any split unless given), None when none."""
    return report.pick(evaluations(v), report.dataset_ref(root).id, split)


def trained_root(v: RunView) -> Path | None:
    """The folder the run's checkpoint was trained on (checkpoint.json, read without torch)."""
    for sub in ("best", "last", "."):
        info = launch_info(v.path / sub / CKPT_META)
        if info:
            return report.trained_data_root(info)
    return None


def eval_split(v: RunView, root: str | Path) -> str:
    """The split an evaluation on ``root`` uses: the recorded test patients on the run's own training data,
    every case ("all", thresholds calibrated on that cohort's own healthy slices) on any other folder."""
    trained = trained_root(v)
    return "test" if trained is not None and trained.resolve() == Path(root).resolve() else "all"


def eval_out(v: RunView, root: str | Path, split: str | None = None) -> Path:
    """Where an evaluation of the run on ``root`` is (or will be) written."""
    return report.eval_folder(report.write_base(v.path), report.dataset_ref(root), split or eval_split(v, root))


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
    if launch and runs.pid_alive(launch.get("pid")):
        prog = launch_info(out / "progress.json")
        return EvalJob("running", out, str(prog.get("phase") or ""), int(prog.get("done") or 0), int(prog.get("total") or 0),
                       tail(out / EVAL_LOG, 3))
    if metrics.is_file() and (not launch or _mtime(metrics) >= launch.get("started", 0)):
        return EvalJob("done", out)
    if launch:
        return EvalJob("failed", out, log=tail(out / EVAL_LOG))
    if evaluation_on(v, root, split) is not None:  # e.g. an older layout, or written by the CLI elsewhere
        return EvalJob("done", out)
    return EvalJob("none", out)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def home_evaluation(v: RunView) -> report.EvaluationSummary | None:
    """The evaluation on the run's own training data if there is one, else its newest."""
    found = evaluations(v)
    trained = trained_root(v)
    own = report.pick(found, report.dataset_ref(trained).id) if trained is not None else None
    return own or (found[0] if found else None)


def eval_metrics(v: RunView) -> dict[str, Any]:
    """metrics.json of ``home_evaluation`` ({} when the run has none)."""
    s = home_evaluation(v)
    return s.raw if s is not None else {}
