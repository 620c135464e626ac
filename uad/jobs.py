"""Background jobs: ``python -m uad ...`` started as a separate process, cancelled, resumed, and the state a
run or an evaluation is in as seen from its folder and its process.

The app and the CLI both call this, so they cannot disagree about what "running", "failed" or "cancelled"
means. A job's whole state lives on disk (``status.json`` written by the trainer, ``launch.json`` written
here), so every browser tab, every app restart and ``python -m uad runs`` see the same thing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uad import fileio, paths, report, runs
from uad.errors import ConfigError

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
    """A JSON object file written here or by the trainer ({} when missing or unreadable)."""
    return runs.read_object(path) or {}


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
def check_train_config(config) -> None:
    """Everything about a training configuration that can be checked without its data, in this process,
    before anything starts or any folder is made: the settings (``TrainConfig``), the model options'
    choices and bounds, and the model built from them (on the meta device, so no memory is allocated)."""
    from uad.train import check_config

    check_config(config)


def train_argv(config) -> list[str]:
    """``uad train`` arguments that reproduce ``config`` (a ``uad.train.TrainConfig``)."""
    from uad.models import model_options

    argv = ["--model", config.model, "--modalities", *config.modalities, "--image-size", str(config.image_size),
            "--epochs", str(config.epochs), "--batch-size", str(config.batch_size), "--lr", repr(float(config.lr)),
            "--seed", str(config.seed), "--split-ratios", ",".join(repr(float(r)) for r in config.split_ratios),
            "--num-workers", str(config.num_workers)]
    if config.max_minutes:
        argv += ["--max-minutes", repr(float(config.max_minutes))]
    if config.data is not None:
        argv += ["--data", str(config.data)]
    if config.device:
        argv += ["--device", config.device]
    known = model_options(config.model)
    for name, value in config.model_options.items():
        if name in known and value != known[name].default:  # only what differs: the model's defaults stay its own
            argv += [f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def launch_train(config, run_dir: Path | None = None, name: str | None = None, tags: list[str] = (),
                 note: str = "") -> Path:
    """Check ``config`` (a ``uad.train.TrainConfig``) and start ``uad train`` in the background in a new run
    folder; returns the folder. A bad setting raises ConfigError before any folder exists."""
    check_train_config(config)
    for tag in tags:
        runs.check_tag(tag)
    run_dir = run_dir or runs.new_run_dir(config.model)
    try:
        if name or tags or note:
            runs.update_meta(run_dir, name=name, tags=list(tags), note=note)
        runs.write_status(run_dir, "queued", model=config.model, queued=time.time(), epochs=config.epochs)
        start_process(str(run_dir), ["train", *train_argv(config), "--out", str(run_dir), "--no-progress"],
                      run_dir / STDOUT, run_dir / LAUNCH)
    except BaseException:
        if not (run_dir / LAUNCH).exists():  # nothing started: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def resume_run(run_dir: Path, epochs: int | None = None) -> None:
    """Continue a stopped run from its last checkpoint in the background (optionally to a new epoch total)."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} no longer exists")
    view = run_view(_info(run_dir))
    if view.active:
        raise ConfigError(f"{run_dir.name} is {view.state}; cancel it first or wait for it to end")
    if not view.resumable:
        raise ConfigError(f"{run_dir.name} cannot be resumed: " + ("it is a shipped checkpoint" if view.info.shipped
                                                                    else "it has no last/ checkpoint"))
    if epochs is not None and epochs < max(view.epochs_done, 1):
        raise ConfigError(f"{run_dir.name}: --epochs {epochs} is below the {view.epochs_done} epochs already trained")
    argv = ["train", "--resume", str(run_dir), "--no-progress"]
    if epochs:
        argv += ["--epochs", str(epochs)]
    runs.write_status(run_dir, "queued", queued=time.time(), error=None, end=None, reason=None)
    start_process(str(run_dir), argv, run_dir / STDOUT, run_dir / LAUNCH)


def cancel_run(run_dir: Path) -> str:
    """SIGTERM the run's process group; the trainer saves a checkpoint and records 'cancelled'."""
    if not run_dir.is_dir():
        return f"{run_dir.name} no longer exists."
    status = runs.read_status(run_dir) or {}
    if status.get("state") not in ("queued", "running"):
        return f"{run_dir.name} is not running ({status.get('state', 'no status')}); nothing to cancel."
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


def format_duration(seconds: float | None) -> str:
    """42 s, 1 min 10 s, 2 h 05 min."""
    if seconds is None or not seconds == seconds:
        return "?"
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


LABELS = {"completed": "completed", "time_budget": "time budget", "cancelled": "cancelled", "failed": "failed"}


@dataclass
class RunView:
    """A run's state as seen from its folder and its process: what the app and ``uad runs`` show."""

    info: runs.RunInfo
    state: str
    epoch: int  # epochs done
    epochs: int
    error: str | None
    log: str

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def name(self) -> str:
        """The name the user gave the run, else its folder name."""
        return self.info.display_name

    @property
    def tags(self) -> list[str]:
        return list(self.info.meta.get("tags", []))

    @property
    def note(self) -> str:
        return self.info.meta.get("note", "")

    @property
    def status(self) -> dict[str, Any]:
        return self.info.status

    @property
    def end(self) -> dict[str, Any]:
        """How a finished run ended (status.json ``end``), inferred for runs recorded before it existed."""
        if self.state not in runs.FINAL_STATES:
            return {}
        end = self.status.get("end")
        if isinstance(end, dict) and end.get("kind") in LABELS and (end["kind"] == self.state or self.state == "completed"):
            return end
        kind = "time_budget" if self.state == "completed" and self.status.get("reason") == "time budget" else self.state
        return {"kind": kind, "epochs_done": self.epoch, "epochs": self.epochs}

    @property
    def end_kind(self) -> str | None:
        return self.end.get("kind")

    @property
    def epochs_done(self) -> int:
        return int(self.end.get("epochs_done", self.epoch) or 0)

    @property
    def label(self) -> str:
        """One or two words: queued, running, completed, time budget, cancelled, failed, shipped."""
        if self.state == "shipped":
            return "shipped"
        return LABELS.get(self.end_kind or "", self.state)

    @property
    def batch(self) -> tuple[int, int] | None:
        """(batches done, batches per epoch) in the epoch in progress, while running."""
        batches = int(self.status.get("batches") or 0)
        if self.state != "running" or not batches:
            return None
        return int(self.status.get("batch") or 0), batches

    @property
    def eta(self) -> float | None:
        """Seconds until the run ends, from the trainer's last estimate minus the time since it wrote it."""
        eta = self.status.get("eta")
        if self.state != "running" or eta is None:
            return None
        return max(float(eta) - (time.time() - float(self.status.get("updated") or time.time())), 0.0)

    @property
    def progress(self) -> float:
        """Fraction of the run done: 1 for a run that ended as asked (all epochs, or its whole time budget);
        within an epoch while running; where it stopped for a cancelled or failed run."""
        if self.state == "shipped" or self.end_kind in ("completed", "time_budget"):
            return 1.0
        if not self.epochs:
            return 0.0
        batch = self.batch
        done = self.epoch + (batch[0] / batch[1] if batch and batch[0] < batch[1] else 0.0)
        end = self.end
        if end.get("batches") and end.get("batch", 0) < end["batches"]:
            done = self.epochs_done + end["batch"] / end["batches"]
        return min(max(done / self.epochs, 0.0), 1.0)

    @property
    def outcome(self) -> str:
        """The state in words, saying where the run is or where it stopped."""
        if self.state == "queued":
            return "starting (preparing data)…"
        if self.state == "shipped":
            return "shipped checkpoint"
        if self.state == "running":
            batch = self.batch
            if batch is None:
                return f"epoch {min(self.epoch + 1, self.epochs)}/{self.epochs} · preparing"
            current = int(self.status.get("current_epoch") or self.epoch + 1)
            eta = self.eta
            return (f"epoch {current}/{self.epochs} · batch {batch[0]}/{batch[1]}"
                    + (f" · ETA {format_duration(eta)}" if eta is not None else ""))
        end = self.end
        where = _where(end)
        kind = end.get("kind")
        if kind == "completed":
            return f"completed {self.epochs_done}/{self.epochs} epochs"
        if kind == "time_budget":
            minutes = end.get("max_minutes") or (self.info.config.get("train") or {}).get("max_minutes")
            budget = f"its {minutes:g}-min time budget" if minutes else "its time budget"
            return f"stopped by {budget} " + (where or f"after {self.epochs_done}/{self.epochs} epochs")
        if kind == "cancelled":
            reason = end.get("reason") or self.status.get("reason")
            return "cancelled" + (f" {where}" if where else "") + (f" ({reason})" if reason else "")
        if kind == "failed":
            return "failed" + (f" {where}" if where else "") + f": {self.error or end.get('reason') or 'no error recorded'}"
        return self.state

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def has_checkpoint(self) -> bool:
        return any((self.path / sub / CKPT_META).is_file() for sub in ("best", "last", "."))

    @property
    def resumable(self) -> bool:
        return not self.info.shipped and not self.active and (self.path / "last" / CKPT_META).is_file()

    @property
    def samples(self) -> tuple[Path, int] | None:
        """The sample reconstructions picture and the epoch it shows, when the trainer has written one."""
        picture = self.path / runs.SAMPLES
        if not picture.is_file():
            return None
        return picture, int(launch_info(self.path / runs.SAMPLES_INFO).get("epoch") or 0)


def _where(end: dict[str, Any]) -> str:
    """'in epoch 3/20 at batch 40/120' for a stop mid-epoch, 'after epoch 3/20' at an epoch's end."""
    if not end.get("batches") or not end.get("epoch"):
        return ""
    epochs = f"/{end['epochs']}" if end.get("epochs") else ""
    if end.get("batch", 0) >= end["batches"]:
        return f"after epoch {end['epoch']}{epochs}"
    return f"in epoch {end['epoch']}{epochs} at batch {end.get('batch', 0)}/{end['batches']}"


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


def list_run_views(include_shipped: bool = True, archived: bool = False) -> list[RunView]:
    reap()
    return [run_view(r) for r in runs.list_runs(include_shipped=include_shipped, archived=archived)]


def _info(run_dir: Path) -> runs.RunInfo:
    """The RunInfo of one run folder (runs/, its archive, or a shipped checkpoint)."""
    run_dir = Path(run_dir)
    for archived in (False, True):
        for info in runs.list_runs(include_shipped=not archived, archived=archived):
            if info.path.resolve() == run_dir.resolve():
                return info
    status = runs.read_status(run_dir)
    config = runs.read_object(run_dir / "config.json") or {}
    if status is None and not config:
        raise ConfigError(f"{run_dir}: not a run folder (no status.json or config.json)")
    return runs.RunInfo(run_dir, run_dir.name, config.get("model") or (status or {}).get("model", "?"),
                        runs.effective_state(status), False, status or {}, config, runs.read_meta(run_dir))


def find_run(ref: str | Path, archived: bool | None = None) -> RunView:
    """A run by folder path, folder name, or the name the user gave it (unique); archived runs when
    ``archived`` (both when None). A ConfigError names what was looked for when nothing or several match."""
    reap()
    path = Path(ref)
    if path.is_dir() and ((path / "status.json").exists() or (path / "config.json").exists()):
        return run_view(_info(path))
    pools = {False: [False], True: [True], None: [False, True]}[archived]
    views = [run_view(i) for a in pools for i in runs.list_runs(include_shipped=not a, archived=a)]
    for match in (lambda v: v.info.name == str(ref), lambda v: v.info.meta.get("name") == str(ref)):
        found = [v for v in views if match(v)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ConfigError(f"{ref!r} names {len(found)} runs ({', '.join(str(v.path) for v in found)}); give its folder")
    where = "the archive" if archived else str(paths.runs_dir())
    raise ConfigError(f"no run {str(ref)!r} in {where} (give a run folder, its folder name, or its name)")


def _refuse_active_or_shipped(v: RunView, action: str) -> None:
    if v.info.shipped:
        raise ConfigError(f"{v.info.name} is a shipped checkpoint; shipped checkpoints are never {action}")
    if v.active or (v.state == "running"):
        raise ConfigError(f"{v.info.name} is {v.state}; cancel it first, then it can be {action}")


def archive_run(run_dir: Path) -> Path:
    """Move a finished run into runs/.archive/ (restorable); refuses active runs and shipped checkpoints."""
    v = run_view(_info(run_dir))
    _refuse_active_or_shipped(v, "archived")
    return runs.archive(v.path)


def restore_run(run_dir: Path) -> Path:
    """Move an archived run back into runs/."""
    return runs.restore(run_dir)


def delete_run(run_dir: Path) -> None:
    """Delete a run (or archived run) for good; refuses active runs and shipped checkpoints."""
    v = run_view(_info(run_dir))
    _refuse_active_or_shipped(v, "deleted")
    runs.delete(v.path)


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
    info = v.info.checkpoint_info
    return report.trained_data_root(info) if info else None


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
    return report.home_evaluation(v.path, v.info.checkpoint_info)


def eval_metrics(v: RunView) -> dict[str, Any]:
    """metrics.json of ``home_evaluation`` ({} when the run has none)."""
    s = home_evaluation(v)
    return s.raw if s is not None else {}
