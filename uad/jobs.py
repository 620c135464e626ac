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

from uad import fileio, paths, runs

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
def eval_dir(v: RunView) -> Path:
    """Where a run's evaluation lives; shipped checkpoints evaluated here go under runs/ (nothing is ever
    written into the repository's checkpoints folder)."""
    own = v.path / "eval"
    if v.info.shipped and not (own / "metrics.json").is_file():
        return paths.runs_dir() / "shipped-eval" / v.info.name / "eval"
    return own


def eval_launch_path(v: RunView) -> Path:
    return eval_dir(v).parent / "eval-launch.json"


def launch_eval(v: RunView) -> None:
    """Start ``uad evaluate`` for the run in the background."""
    out = eval_dir(v)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["evaluate", "--run", str(v.path), "--out", str(out)]
    start_process(f"eval:{v.path}", argv, out.parent / "eval.log", eval_launch_path(v))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def eval_state(v: RunView) -> tuple[str, str]:
    """('done' | 'running' | 'failed' | 'none', log tail) for a run's evaluation."""
    reap()
    launch = launch_info(eval_launch_path(v))
    metrics = eval_dir(v) / "metrics.json"
    if launch and runs.pid_alive(launch.get("pid")):
        return "running", tail(eval_dir(v).parent / "eval.log", 3)
    if metrics.is_file() and (not launch or _mtime(metrics) >= launch.get("started", 0)):
        return "done", ""
    if launch:
        return "failed", tail(eval_dir(v).parent / "eval.log")
    return "none", ""


def eval_metrics(v: RunView) -> dict[str, Any]:
    """The run's evaluation summary (metrics.json), {} when missing or unreadable."""
    try:
        m = fileio.read_json(eval_dir(v) / "metrics.json")
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}
