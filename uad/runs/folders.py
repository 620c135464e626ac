"""Run folders: one per training run, the single source of truth for its state.

    runs/<YYYYmmdd-HHMMSS>-<model>/
        config.json      what was asked (model, data, preprocessing, split, training settings)
        status.json      queued | running | completed | failed | cancelled (+ pid, error, times); replaced atomically
        run.lock         locked (flock) by the training process for as long as it writes here
        metrics.jsonl    one line per epoch, append-only (losses, validation loss, slices/s, learning rate, GPU memory)
        steps.jsonl      the mean training losses every few steps (``uad.train.log_every``), append-only
        samples.png      input / reconstruction / |difference| of 4 fixed validation slices, after the latest epoch
        samples/         the same picture per epoch (epoch-0001.png, ...), at most ``history.SAMPLE_EPOCHS_KEPT``
        samples.json     what the pictures show: the epoch of samples.png, the rows, the slices (case, index)
        meta.json        what the user calls the run: a name, tags and a note (``update_meta``)
        train.log        the trainer's log
        last/, best/     checkpoints (model.safetensors + checkpoint.json)
        eval/            evaluation results (metrics.json, slices.csv, curves)

status.json's ``end`` says how a finished run ended and where: ``{"kind": "completed" | "time_budget" |
"cancelled" | "failed", "epoch": E, "batch": B, "batches": N, ...}``. While it runs, status.json also holds
the batch within the epoch, the elapsed time and an ETA (rewritten at most every 2 s).

Runs the user no longer wants listed are archived into ``runs/.archive/`` (restorable) or deleted; neither
touches a run a process is writing (its lock is taken first) nor anything outside the runs folder, such as
the shipped checkpoints.

Every reader (CLI, app, other browser tabs, a restarted app) sees the same state because it lives on disk.
Only one process trains into a folder at a time (``claim``), and a folder that already holds a run is
continued (resume) or moved aside (overwrite), never written over.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from uad.core import fileio, paths
from uad.core.errors import ConfigError
from uad.core.processes import pid_alive

STATES = ("queued", "running", "completed", "failed", "cancelled")


FINAL_STATES = ("completed", "failed", "cancelled")


LOCK = "run.lock"


STEPS = "steps.jsonl"


SAMPLES = "samples.png"


SAMPLES_INFO = "samples.json"


SAMPLES_DIR = "samples"  # samples/epoch-0001.png ...: the sample reconstructions kept per epoch (uad.runs.history)


# What makes a folder a run that training would write over. A status.json that only says "queued" is
# the app reserving the folder for the process it is about to start.
RUN_FILES = ("config.json", "metrics.jsonl", "best", "last")


def new_run_dir(model: str, root: str | Path | None = None) -> Path:
    """Create ``<root>/<timestamp>-<model>/``, adding a counter if that name is taken."""
    root = Path(root or paths.runs_dir())
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{stamp}-{model}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {root}")


class RunLock:
    """An exclusive lock on ``<run>/run.lock``, held by the one process writing the run.

    The operating system drops it when the process ends, however it ends, so a killed trainer never
    leaves the folder locked. The file stays (removing it would let two processes lock two files).
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None
        self.moved_to: Path | None = None  # where claim(overwrite=True) moved the previous run

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except OSError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise ConfigError(f"{self.run_dir}: another training process (pid {holder or '?'}) is writing this run "
                              "folder; wait for it to finish, cancel it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def existing_run(run_dir: str | Path) -> list[str]:
    """What in ``run_dir`` shows that a run has already been trained (or started) there; [] if nothing."""
    run_dir = Path(run_dir)
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    status = read_status(run_dir)
    if status is not None and status.get("state") != "queued":
        found.append(f"status.json ({status.get('state')})")
    elif status is None and (run_dir / "status.json").exists():
        found.append("status.json (unreadable)")
    return found


def move_aside(run_dir: str | Path) -> Path:
    """Move everything in ``run_dir`` but its lock to a new sibling ``<run>.old-<timestamp>``; returns it.

    The folder itself (and the lock in it, which the caller holds) stays, so no second writer can slip in.
    """
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        aside = run_dir.parent / (f"{run_dir.name}.old-{stamp}" + (f"-{i}" if i else ""))
        try:
            aside.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise ConfigError(f"{run_dir}: could not find a free name to move the old run aside")
    for entry in run_dir.iterdir():
        if entry.name != LOCK:
            os.replace(entry, aside / entry.name)
    fileio.fsync_dir(aside)
    fileio.fsync_dir(run_dir)
    return aside


def claim(run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Lock ``run_dir`` for one training process; returns the held lock (release it when done).

    A second process gets a ConfigError at once. Unless resuming, a folder that already holds a run is
    refused, or with ``overwrite`` its contents are moved aside first (never deleted).
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError(f"{run_dir}: --resume continues a run and --overwrite moves it aside; choose one")
    if resume and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: cannot resume, no such run folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()
    try:
        found = [] if resume else existing_run(run_dir)
        if found and not overwrite:
            raise ConfigError(f"{run_dir}: already holds a run ({', '.join(found)}); use --resume {run_dir} to continue "
                              "it, --overwrite to move it aside and start afresh, or choose another --out")
        if found:
            lock.moved_to = move_aside(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def write_status(run_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Replace status.json, keeping earlier fields (e.g. started) unless overwritten."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    current = read_status(run_dir) or {}
    current.update(fields)
    current["state"] = state
    current["updated"] = time.time()
    fileio.write_json(Path(run_dir) / "status.json", current)
    return current


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """status.json as a dict; None when missing, unreadable or not a JSON object."""
    return read_object(Path(run_dir) / "status.json")


def read_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file, None when it is missing, unreadable or not an object."""
    try:
        obj = fileio.read_json(path)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return fileio.read_jsonl(Path(run_dir) / "metrics.jsonl")


def read_steps(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step loss records (steps.jsonl); [] for runs trained before it existed."""
    return fileio.read_jsonl(Path(run_dir) / STEPS)


def effective_state(status: dict[str, Any] | None) -> str:
    """The state to show: a 'running' run whose process is gone died without saying so."""
    if not status:
        return "unknown"
    state = status.get("state", "unknown")
    if state == "running" and not pid_alive(status.get("pid")):
        return "failed"
    return state

