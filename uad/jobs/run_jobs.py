"""Training runs as jobs: launched, cancelled, resumed, archived or deleted, and the state a run is in as seen
from its folder and its process (``RunView``), which the app and ``uad runs`` both show."""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uad.checkpoints.record import META
from uad.core import paths, processes
from uad.core.errors import ConfigError, DataError
from uad.jobs.background import LAUNCH, STDOUT, launch_info, reap, start_process, tail
from uad.runs import archive, folders, listing
from uad.runs import meta as run_meta

CKPT_META = META  # checkpoint.json (uad.checkpoints.record reads it without torch)


def check_train_config(config) -> None:
    """Everything about a training configuration that can be checked without its data, in this process,
    before anything starts or any folder is made: the settings (``TrainConfig``), the model options'
    choices and bounds, and the model built from them (on the meta device, so no memory is allocated)."""
    from uad.training.config import check_config

    check_config(config)


REQUEST = "request.json"  # in a run folder the app or ``uad runs`` started: the validated TrainConfig it was asked to train


def launch_train(config, run_dir: Path | None = None, name: str | None = None, tags: list[str] = (),
                 note: str = "") -> Path:
    """Check ``config`` (a ``uad.training.config.TrainConfig``) and start ``uad train --config`` in the background in
    a new run folder; returns the folder. A bad setting raises ConfigError before any folder exists."""
    check_train_config(config)
    for tag in tags:
        run_meta.check_tag(tag)
    run_dir = run_dir or folders.new_run_dir(config.model)
    try:
        if name or tags or note:
            run_meta.update_meta(run_dir, name=name, tags=list(tags), note=note)
        folders.write_status(run_dir, "queued", model=config.model, queued=time.time(), epochs=config.epochs)
        config.write(run_dir / REQUEST)  # the trainer reads this one object (``uad train --config``), not CLI strings
        start_process(str(run_dir), ["train", "--config", str(run_dir / REQUEST), "--out", str(run_dir), "--no-progress"],
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
    folders.write_status(run_dir, "queued", queued=time.time(), error=None, end=None, reason=None)
    start_process(str(run_dir), argv, run_dir / STDOUT, run_dir / LAUNCH)


TRAINER = ("uad", "train")  # words of a trainer's command line (python -m uad train, uad train, torchrun -m uad train)


def cancel_run(run_dir: Path) -> str:
    """SIGTERM the run's trainer (its process group when it leads one); it saves a checkpoint and records
    'cancelled'. Only a process shown to be this run's trainer is signalled: the pid recorded in status.json
    (or launch.json while queued) must be alive, have started when recorded, and run ``uad train``. A
    stale, reused or planted pid is never signalled."""
    if not run_dir.is_dir():
        return f"{run_dir.name} no longer exists."
    status = folders.read_status(run_dir) or {}
    if status.get("state") not in ("queued", "running"):
        return f"{run_dir.name} is not running ({status.get('state', 'no status')}); nothing to cancel."
    source = status if status.get("state") == "running" else launch_info(run_dir / LAUNCH)
    pid, pid_start = source.get("pid"), source.get("pid_start")
    if not processes.pid_alive(pid):
        folders.write_status(run_dir, "cancelled", finished=time.time(), reason="no live process when cancelled")
        return "The run had no live process; marked cancelled."
    ours, why = processes.is_recorded_process(pid, pid_start, TRAINER)
    if not ours:
        folders.write_status(run_dir, "cancelled", finished=time.time(),
                             reason=f"its trainer was gone; {why}, so it was not signalled")
        return f"Not signalled: {why}. The run's own trainer is gone; marked cancelled."
    try:
        if os.getpgid(pid) == pid:  # started by uad in its own session: the group holds its data-loader workers
            os.killpg(pid, signal.SIGTERM)
        else:  # a trainer started from a terminal shares its shell's group: signal it alone
            os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError) as exc:
        return f"Could not signal process {pid}: {exc}"
    time.sleep(0.3)
    if (folders.read_status(run_dir) or {}).get("state") == "queued":
        # Killed before the trainer installed its handler: nobody else will record it.
        folders.write_status(run_dir, "cancelled", finished=time.time(), reason="cancelled before training started")
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

    info: listing.RunInfo
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
        if self.state not in folders.FINAL_STATES:
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
        if end.get("batches") and (end.get("batch") or 0) < end["batches"]:
            done = self.epochs_done + (end.get("batch") or 0) / end["batches"]
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


def _where(end: dict[str, Any]) -> str:
    """'in epoch 3/20 at batch 40/120' for a stop mid-epoch, 'after epoch 3/20' at an epoch's end."""
    if not end.get("batches") or not end.get("epoch"):
        return ""
    epochs = f"/{end['epochs']}" if end.get("epochs") else ""
    if (end.get("batch") or 0) >= end["batches"]:
        return f"after epoch {end['epoch']}{epochs}"
    return f"in epoch {end['epoch']}{epochs} at batch {end.get('batch') or 0}/{end['batches']}"


def run_view(info: listing.RunInfo) -> RunView:
    status = info.status
    state = info.state
    error = status.get("error")
    if state == "queued":
        launch = launch_info(info.path / LAUNCH)
        if launch and not processes.pid_alive(launch.get("pid")):
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


def list_run_views(include_shipped: bool = True, archived: bool = False,
                   skipped: list[listing.SkippedRun] | None = None,
                   finished: list[tuple[Path, int]] | None = None) -> list[RunView]:
    """Every run as the app and ``uad runs list`` show it; damaged folders are left out (and added to
    ``skipped`` with the reason). Deletes that were killed midway (``runs/.deleting-<name>-<pid>``) are
    finished first, and added to ``finished`` as (folder, bytes freed)."""
    reap()
    try:
        done = archive.finish_interrupted_deletes()
    except OSError:  # e.g. a read-only runs folder: nothing could have been half-deleted there by uad
        done = []
    if finished is not None:
        finished.extend(done)
    return [run_view(r) for r in listing.list_runs(include_shipped=include_shipped, archived=archived, skipped=skipped)]


def _info(run_dir: Path) -> listing.RunInfo:
    """The RunInfo of one run folder (runs/, its archive, or a shipped checkpoint); a UADError naming the
    file when one of its files is damaged."""
    run_dir = Path(run_dir)
    for archived in (False, True):
        for info in listing.list_runs(include_shipped=not archived, archived=archived):
            if info.path.resolve() == run_dir.resolve():
                return info
    info = listing.read_run(run_dir, run_dir.name, shipped=paths.is_shipped(run_dir))
    if info is None:
        raise ConfigError(f"{run_dir}: not a run folder (no status.json or config.json)")
    return info



def find_run(ref: str | Path, archived: bool | None = None, damaged_ok: bool = False) -> RunView:
    """A run by folder path, folder name, or the name the user gave it (unique); archived runs when
    ``archived`` (both when None). A ConfigError names what was looked for when nothing or several match.

    A run whose files are damaged is a DataError naming the file; with ``damaged_ok`` (archive, delete) a
    folder given by its path or folder name is returned anyway, in the state "damaged"."""
    reap()
    path = Path(ref)
    candidates = [path] + [root / str(ref) for root in (paths.runs_dir(), archive.archive_dir())
                           if damaged_ok and str(ref) and "/" not in str(ref)]
    for folder in candidates:
        if folder.is_dir() and ((folder / "status.json").exists() or (folder / "config.json").exists()):
            try:
                return run_view(_info(folder))
            except DataError:
                if not damaged_ok:
                    raise
                return RunView(listing.RunInfo(folder, folder.name, "?", "damaged", paths.is_shipped(folder), {}, {}),
                               "damaged", 0, 0, None, "")
        if folder == path and not damaged_ok:
            break
    pools = {False: [False], True: [True], None: [False, True]}[archived]
    views = [run_view(i) for a in pools for i in listing.list_runs(include_shipped=not a, archived=a)]
    for match in (lambda v: v.info.name == str(ref), lambda v: v.info.meta.get("name") == str(ref)):
        found = [v for v in views if match(v)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ConfigError(f"{ref!r} names {len(found)} runs ({', '.join(str(v.path) for v in found)}); give its folder")
    where = "the archive" if archived else str(paths.runs_dir())
    raise ConfigError(f"no run {str(ref)!r} in {where} (give a run folder, its folder name, or its name)")


def require_own(v: RunView, action: str) -> None:
    """A ConfigError unless the run is a folder directly under the runs folder or its archive: ``uad runs``
    acts on nothing else (never a shipped checkpoint, never a folder the user keeps elsewhere)."""
    if v.info.shipped or paths.is_shipped(v.path):
        raise ConfigError(f"{v.info.name} is a shipped checkpoint; shipped checkpoints are never {action}")
    parent = v.path.resolve().parent
    if parent not in (paths.runs_dir().resolve(), archive.archive_dir().resolve()) or v.path.name.startswith("."):
        raise ConfigError(f"{v.path}: not a run in {paths.runs_dir()}; `uad runs` works only on folders directly "
                          "under it (and its archive)")


def _refuse_active_or_shipped(v: RunView, action: str) -> None:
    if v.info.shipped:
        raise ConfigError(f"{v.info.name} is a shipped checkpoint; shipped checkpoints are never {action}")
    if v.active or (v.state == "running"):
        raise ConfigError(f"{v.info.name} is {v.state}; cancel it first, then it can be {action}")


def _view_unless_damaged(run_dir: Path) -> RunView | None:
    """The run's view, or None when one of its files is damaged: such a run can still be archived or deleted
    (the run lock, taken for the move, keeps a live trainer's folder where it is)."""
    try:
        return run_view(_info(run_dir))
    except DataError:
        return None


def archive_run(run_dir: Path) -> Path:
    """Move a finished run into runs/.archive/ (restorable); refuses active runs and shipped checkpoints."""
    v = _view_unless_damaged(run_dir)
    if v is not None:
        _refuse_active_or_shipped(v, "archived")
    return archive.archive(run_dir)


def restore_run(run_dir: Path) -> Path:
    """Move an archived run back into runs/."""
    return archive.restore(run_dir)


def delete_run(run_dir: Path) -> None:
    """Delete a run (or archived run) for good; refuses active runs and shipped checkpoints."""
    v = _view_unless_damaged(run_dir)
    if v is not None:
        _refuse_active_or_shipped(v, "deleted")
    archive.delete(run_dir)

