"""Run folders: one per training run, the single source of truth for its state.

    runs/<YYYYmmdd-HHMMSS>-<model>/
        config.json      what was asked (model, data, preprocessing, split, training settings)
        status.json      queued | running | completed | failed | cancelled (+ pid, error, times); replaced atomically
        run.lock         locked (flock) by the training process for as long as it writes here
        metrics.jsonl    one line per epoch, append-only
        steps.jsonl      the mean training losses every few steps (``uad.train.log_every``), append-only
        samples.png      input / reconstruction / |difference| of 4 fixed validation slices, after each epoch
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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uad import fileio, paths
from uad.errors import ConfigError

STATES = ("queued", "running", "completed", "failed", "cancelled")
FINAL_STATES = ("completed", "failed", "cancelled")
LOCK = "run.lock"
STEPS = "steps.jsonl"
SAMPLES = "samples.png"
SAMPLES_INFO = "samples.json"
META = "meta.json"
ARCHIVE = ".archive"  # under the runs folder: archived runs, listed separately and restorable
MAX_NAME, MAX_TAG, MAX_NOTE = 120, 40, 5000
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


# -- what the user calls a run: name, tags, note ---------------------------------------------------------
def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """meta.json as {"name": str | None, "tags": [str], "note": str}; defaults when missing or unreadable."""
    raw = read_object(Path(run_dir) / META) or {}
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else None
    tags = [t for t in raw.get("tags", []) if isinstance(t, str)] if isinstance(raw.get("tags"), list) else []
    note = raw.get("note") if isinstance(raw.get("note"), str) else ""
    return {"name": name, "tags": tags, "note": note}


def check_tag(tag: str) -> str:
    tag = str(tag).strip()
    if not tag or len(tag) > MAX_TAG or any(c.isspace() or c == "," for c in tag):
        raise ConfigError(f"tag {tag!r}: one word of 1 to {MAX_TAG} characters, without spaces or commas")
    return tag


_UNCHANGED: Any = object()


def update_meta(run_dir: str | Path, *, name: str | None = _UNCHANGED, tags: list[str] | None = None,
                add_tags: list[str] = (), remove_tags: list[str] = (), note: str | None = None) -> dict[str, Any]:
    """Change a run's name (None or "" clears it), its tags (replace, add or remove) or its note; written atomically."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    meta = read_meta(run_dir)
    if name is not _UNCHANGED:
        name = (name or "").strip()
        if len(name) > MAX_NAME or "\n" in name:
            raise ConfigError(f"run name: one line of at most {MAX_NAME} characters")
        meta["name"] = name or None
    if tags is not None:
        meta["tags"] = []
    for tag in [*(tags or []), *add_tags]:
        tag = check_tag(tag)
        if tag not in meta["tags"]:
            meta["tags"].append(tag)
    drop = {str(t).strip() for t in remove_tags}
    meta["tags"] = [t for t in meta["tags"] if t not in drop]
    if note is not None:
        if len(note) > MAX_NOTE:
            raise ConfigError(f"run note: at most {MAX_NOTE} characters, got {len(note)}")
        meta["note"] = note.strip()
    fileio.write_json(run_dir / META, meta)
    return meta


# -- archive, restore, delete ---------------------------------------------------------------------------
def archive_dir(root: str | Path | None = None) -> Path:
    return Path(root or paths.runs_dir()) / ARCHIVE


def _own_run(run_dir: str | Path, archived: bool, root: str | Path | None = None) -> Path:
    """``run_dir`` if it is a run folder directly under the runs folder (or its archive); else a ConfigError.

    This is what keeps archive and delete away from shipped checkpoints and any folder the user keeps elsewhere.
    """
    run_dir = Path(run_dir)
    parent = (archive_dir(root) if archived else Path(root or paths.runs_dir())).resolve()
    where = "the archive " + str(parent) if archived else str(parent)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    if run_dir.resolve().parent != parent or run_dir.name.startswith("."):
        raise ConfigError(f"{run_dir}: not a run in {where}; only runs there are archived, restored or deleted "
                          "(shipped checkpoints never are)")
    if read_status(run_dir) is None and not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no status.json or config.json)")
    return run_dir


def _move_locked(run_dir: Path, dest: Path) -> Path:
    """Move a run folder while holding its lock, so no trainer can start writing it meanwhile."""
    if dest.exists():
        raise ConfigError(f"{dest} already exists; rename or delete it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()  # ConfigError while a trainer holds it
    try:
        os.replace(run_dir, dest)
    finally:
        lock.release()
    fileio.fsync_dir(dest.parent)
    return dest


def archive(run_dir: str | Path, root: str | Path | None = None) -> Path:
    """Move a run into ``runs/.archive/`` (listed separately, restorable); returns its new folder."""
    run_dir = _own_run(run_dir, archived=False, root=root)
    return _move_locked(run_dir, archive_dir(root) / run_dir.name)


def restore(run_dir: str | Path, root: str | Path | None = None) -> Path:
    """Move an archived run back into the runs folder; returns its folder there."""
    run_dir = _own_run(run_dir, archived=True, root=root)
    return _move_locked(run_dir, Path(root or paths.runs_dir()) / run_dir.name)


def delete(run_dir: str | Path, root: str | Path | None = None) -> None:
    """Delete a run (or an archived run) for good: renamed out of sight under its lock, then removed."""
    run_dir = Path(run_dir)
    archived = run_dir.resolve().parent == archive_dir(root).resolve()
    run_dir = _own_run(run_dir, archived=archived, root=root)
    doomed = _move_locked(run_dir, run_dir.parent / f".deleting-{run_dir.name}-{os.getpid()}")
    shutil.rmtree(doomed)


def pid_alive(pid: int | None) -> bool:
    """True if the process exists and is not a zombie (a finished child not yet reaped looks alive to kill(0))."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): trust kill(0)


def effective_state(status: dict[str, Any] | None) -> str:
    """The state to show: a 'running' run whose process is gone died without saying so."""
    if not status:
        return "unknown"
    state = status.get("state", "unknown")
    if state == "running" and not pid_alive(status.get("pid")):
        return "failed"
    return state


@dataclass
class RunInfo:
    path: Path
    name: str
    model: str
    state: str
    shipped: bool  # a pretrained checkpoint shipped with the repository
    status: dict[str, Any]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=lambda: {"name": None, "tags": [], "note": ""})
    archived: bool = False

    @property
    def display_name(self) -> str:
        """The name the user gave the run, else its folder name."""
        return self.meta.get("name") or self.name

    @property
    def checkpoint_info(self) -> dict[str, Any] | None:
        """checkpoint.json of the run's best (else last) checkpoint, or of the folder itself when it is one;
        read without torch. None when the run has no checkpoint yet."""
        for sub in ("best", "last", "."):
            info = read_object(self.path / sub / "checkpoint.json")
            if info is not None:
                return info
        return None

    @property
    def training_data(self) -> dict[str, Any]:
        """What the run's checkpoint was trained on (name, description, citation, terms); see uad.data.provenance."""
        from uad.data import provenance

        info = self.checkpoint_info
        if info is not None:
            return provenance.training_data(info)
        return provenance.training_data({"data": {"root": (self.config or {}).get("data_root")}})


REAL_SET = "real"  # checkpoints/real/<model>: the shipped set trained on real scans


def list_runs(include_shipped: bool = True, root: str | Path | None = None, archived: bool = False) -> list[RunInfo]:
    """Runs under the runs folder (newest first), then the shipped checkpoints; ``archived``: the archive's runs instead."""
    out: list[RunInfo] = []
    if archived:
        include_shipped = False
    sources = [(archive_dir(root) if archived else Path(root or paths.runs_dir()), False)]
    if include_shipped:
        # The demo-trained set (checkpoints/<model>) and the real-data set (checkpoints/real/<model>).
        sources.append((paths.checkpoints_dir(), True))
        sources.append((paths.checkpoints_dir() / REAL_SET, True))
    for folder, shipped in sources:
        if not folder.is_dir():
            continue
        entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=not shipped)
        prefix = f"{REAL_SET}/" if folder.name == REAL_SET and shipped else ""
        for path in entries:
            status = read_status(path)
            # A queued run has no config.json yet: the trainer writes it once its data is ready.
            config = read_object(path / "config.json") or {}
            if not config and not status:
                continue  # not a run folder
            model = config.get("model") or (status or {}).get("model", "?")
            out.append(RunInfo(path, prefix + path.name, model, effective_state(status), shipped, status or {}, config,
                               read_meta(path), archived))
    return out


def suggested_checkpoint(infos: list[RunInfo], demo_active: bool, model: str = "autoencoder") -> RunInfo | None:
    """The shipped checkpoint a user should start from: the demo-trained one on the demo cohort, the
    real-data one on any other dataset (a model trained on synthetic anatomy misreads real scans)."""
    want = model if demo_active else f"{REAL_SET}/{model}"
    shipped = [i for i in infos if i.shipped]
    return next((i for i in shipped if i.name == want), next((i for i in shipped if i.model == model), None))
