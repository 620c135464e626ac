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

from uad.core import fields, fileio, paths
from uad.core.errors import ConfigError, DataError, UADError
from uad.core.processes import pid_alive, process_start

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
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            named = fileio.write_error(exc, self.run_dir)
            if named is None:
                raise
            raise ConfigError(f"{self.run_dir}: cannot write this run folder ({exc.strerror}); it cannot be trained, "
                              "resumed, archived or deleted from here") from None
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


EVAL_LOCK = "eval.lock"


class EvaluationLock:
    """``<run>/eval.lock``: every evaluation of the run holds it shared while it reads the checkpoint and
    writes ``<run>/eval/...``; archive, restore and delete take it exclusively (without waiting) before
    moving the run, so a run is never moved from under an evaluation."""

    def __init__(self, fd: int | None):
        self._fd = fd

    @classmethod
    def shared(cls, run_dir: str | Path) -> "EvaluationLock":
        """Held by an evaluation. Waits while a move holds it; a ConfigError when the run was moved or
        deleted meanwhile. A read-only run folder cannot be moved either: then nothing is held."""
        path = Path(run_dir) / EVAL_LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # no run folder there (any more): never create one
            raise ConfigError(f"{run_dir}: the run folder is gone (archived or deleted?)") from None
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return cls(None)  # read-only and never locked: nobody can move it either
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_SH)
        except ImportError:
            pass
        try:
            same = os.path.samestat(os.fstat(fd), path.stat())
        except OSError:
            same = False
        if not same:
            os.close(fd)
            raise ConfigError(f"{run_dir}: the run folder was moved (archived or deleted?) as the evaluation started")
        return cls(fd)

    @classmethod
    def exclusive(cls, run_dir: str | Path) -> "EvaluationLock":
        """Held while moving a run; a ConfigError when an evaluation holds it."""
        path = Path(run_dir) / EVAL_LOCK
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return cls(None)  # never evaluated since locks exist (or read-only): nothing to wait for
        try:
            _lock_fd(fd)
        except OSError:
            os.close(fd)
            raise ConfigError(f"{run_dir}: it is being evaluated right now; wait for the evaluation to finish") from None
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "EvaluationLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def evaluation_launches(run_dir: str | Path) -> list[Path]:
    """Background evaluations of the run (``launch.json`` under its eval/ folder) whose process is still
    that evaluation (same start time, ``uad evaluate`` on its command line)."""
    from uad.core.processes import is_recorded_process

    live = []
    for launch in Path(run_dir).glob("eval/*/*/launch.json"):
        info = read_object(launch) or {}
        ours, _ = is_recorded_process(info.get("pid"), info.get("pid_start"), ("uad", "evaluate"))
        if ours:
            live.append(launch)
    return live


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
    try:
        status = read_status(run_dir)
    except DataError:
        found.append("status.json (unreadable)")
        return found
    if status is not None and status.get("state") != "queued":
        found.append(f"status.json ({status.get('state')})")
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
    refuse_shipped(run_dir, "trained into")
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


def refuse_shipped(run_dir: str | Path, action: str) -> None:
    """A ConfigError when ``run_dir`` is (or lies in) a shipped checkpoint: those are read, never written."""
    if paths.is_shipped(run_dir):
        raise ConfigError(f"{run_dir} is a shipped checkpoint; shipped checkpoints are never {action} "
                          f"(copy it into {paths.runs_dir()} to work on a copy)")


def write_status(run_dir: str | Path, state: str, **values: Any) -> dict[str, Any]:
    """Replace status.json, keeping earlier fields (e.g. started) unless overwritten. A damaged status.json
    is replaced whole (this process is the one that writes the run)."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    refuse_shipped(run_dir, "written")
    try:
        current = read_status(run_dir) or {}
    except DataError:
        current = {}
    current.update(values)
    current["state"] = state
    current["updated"] = time.time()
    current = {k: v[:fields.MAX_TEXT - 1] + "…" if isinstance(v, str) and len(v) > fields.MAX_TEXT else v
               for k, v in fileio.json_safe(current).items()}  # e.g. a very long error message
    check_status(current, Path(run_dir) / "status.json")  # never write what a reader would refuse
    fileio.write_json(Path(run_dir) / "status.json", current)
    return current


MAX_RECORD_BYTES = 16 * 1024 * 1024  # a run's JSON files are a few kB; a larger one is not ours


def read_record(path: Path) -> Any:
    """A run folder's JSON file (status, config, meta): its content, None when it does not exist, or a
    DataError naming the file when it cannot be read or parsed."""
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise DataError(path, f"{path.stat().st_size:,} bytes: far larger than uad writes")
        return fileio.read_json(path)
    except FileNotFoundError:
        return None
    except UADError:
        raise
    except (ValueError, RecursionError) as exc:
        raise DataError(path, f"not valid JSON ({str(exc)[:200]})") from None
    except OSError as exc:
        raise DataError(path, f"unreadable ({exc.strerror or exc})") from None


END_KINDS = ("completed", "time_budget", "cancelled", "failed")


def check_status(raw: Any, path: Path) -> dict[str, Any]:
    """A status.json's content with every field of its type and in bounds, else a DataError naming the file."""
    if not isinstance(raw, dict):
        raise DataError(path, f"damaged run status: expected a JSON object, got {type(raw).__name__}")
    try:
        fields.plain(raw, "status")
        if fields.text(raw, "state", 20, STATES) is None:
            raise fields.FieldError("state is missing")
        fields.whole(raw, "pid", 1, 2**31 - 1)
        fields.whole(raw, "pid_start", 0, 2**63 - 1)
        fields.text(raw, "pid_cmd", 4096)
        for key in ("started", "updated", "finished", "queued", "elapsed", "eta"):
            fields.number(raw, key, 0)
        for key in ("val_loss", "best_val_loss"):
            fields.number(raw, key)
        for key in ("epoch", "epochs", "batch", "batches", "step", "current_epoch", "world_size"):
            fields.whole(raw, key)
        for key in ("error", "reason", "device", "model", "best_selection"):
            fields.text(raw, key)
        end = fields.obj(raw, "end")
        if end is not None:
            fields.text(end, "kind", 20, END_KINDS)
            for key in ("epoch", "batch", "batches", "epochs", "epochs_done"):
                fields.whole(end, key)
            fields.number(end, "elapsed", 0)
            fields.number(end, "max_minutes", 0)
            fields.text(end, "reason")
    except fields.FieldError as exc:
        raise DataError(path, f"damaged run status ({exc})") from None
    return raw


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """status.json, every field checked (``check_status``); None when there is none, a DataError naming the
    file when it is unreadable or a field is wrong."""
    path = Path(run_dir) / "status.json"
    raw = read_record(path)
    return None if raw is None else check_status(raw, path)


def check_config(raw: Any, path: Path) -> dict[str, Any]:
    """A run's config.json with every field the readers use of its type and in bounds, else a DataError."""
    from uad.data.preprocess_config import PreprocessConfig

    if not isinstance(raw, dict):
        raise DataError(path, f"damaged run configuration: expected a JSON object, got {type(raw).__name__}")
    try:
        fields.plain(raw, "config")
        if fields.text(raw, "model", 64) is None:
            raise fields.FieldError("model is missing")
        for key in ("data_root", "store", "device"):
            fields.text(raw, key, 4096)
        fields.whole(raw, "world_size", 1, 10**6)
        for key in ("hparams", "split"):
            fields.obj(raw, key)
        train = fields.obj(raw, "train")
        if train is not None:
            fields.whole(train, "epochs", 1)
            fields.whole(train, "image_size", 1, 4096)
            fields.number(train, "max_minutes", 0)
            mods = train.get("modalities")
            if mods is not None and not (isinstance(mods, list) and all(isinstance(m, str) and len(m) <= 16 for m in mods)):
                raise fields.FieldError(f"train modalities must be a list of names, got {fields.show(mods)}")
        if raw.get("preprocess") is not None:
            try:
                PreprocessConfig.from_dict(raw["preprocess"])
            except ConfigError as exc:
                raise fields.FieldError(f"preprocess: {exc}") from None
    except fields.FieldError as exc:
        raise DataError(path, f"damaged run configuration ({exc})") from None
    return raw


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """config.json, checked (``check_config``); None when there is none (a queued run has none yet)."""
    path = Path(run_dir) / "config.json"
    raw = read_record(path)
    return None if raw is None else check_config(raw, path)


def read_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file written by uad with no fixed fields (launch.json, samples.json), None when it is
    missing, unreadable or not an object. Its fields are checked where they are used."""
    try:
        obj = read_record(path)
    except DataError:
        return None
    return obj if isinstance(obj, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return fileio.read_jsonl(Path(run_dir) / "metrics.jsonl")


def read_steps(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step loss records (steps.jsonl); [] for runs trained before it existed."""
    return fileio.read_jsonl(Path(run_dir) / STEPS)


def trainer_alive(status: dict[str, Any]) -> bool:
    """Whether the process a status names is alive and still the one that wrote it (same start time, where
    recorded: a pid reused by another process after the trainer died is not the trainer)."""
    pid = status.get("pid")
    if not pid_alive(pid):
        return False
    recorded = status.get("pid_start")
    return recorded is None or process_start(pid) in (None, recorded)


def effective_state(status: dict[str, Any] | None) -> str:
    """The state to show: a 'running' run whose process is gone died without saying so."""
    if not status:
        return "unknown"
    state = status.get("state", "unknown")
    if state == "running" and not trainer_alive(status):
        return "failed"
    return state

