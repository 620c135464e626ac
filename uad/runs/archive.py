"""Archive, restore and delete runs: only folders directly under the runs folder (or its archive), under their lock."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from uad.core import fileio, paths
from uad.core.errors import ConfigError
from uad.core.processes import pid_alive
from uad.runs.folders import EvaluationLock, RunLock, evaluation_launches

log = logging.getLogger("uad.runs")

DELETING = ".deleting-"  # <runs>/.deleting-<name>-<pid>: a run being deleted by <pid>

ARCHIVE = ".archive"  # under the runs folder: archived runs, listed separately and restorable


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
    if not (run_dir / "status.json").is_file() and not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no status.json or config.json)")
    return run_dir


def _move_locked(run_dir: Path, dest: Path) -> Path:
    """Move a run folder while holding its lock, so no trainer can start writing it meanwhile."""
    if dest.exists():
        raise ConfigError(f"{dest} already exists; rename or delete it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()  # ConfigError while a trainer holds it
    evaluation = None
    try:
        # An evaluation reads the checkpoint and writes run/eval/...: moving the run under it would leave an
        # orphan eval/ folder behind (and a stale progress.json in the moved run).
        evaluation = EvaluationLock.exclusive(run_dir)  # ConfigError while an evaluation holds it
        starting = evaluation_launches(run_dir)
        if starting:
            raise ConfigError(f"{run_dir}: an evaluation of this run is starting ({starting[0]}); wait for it to finish")
        os.replace(run_dir, dest)
    finally:
        if evaluation is not None:
            evaluation.release()
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
    doomed = _move_locked(run_dir, run_dir.parent / f"{DELETING}{run_dir.name[:200]}-{os.getpid()}")
    shutil.rmtree(doomed)


def interrupted_deletes(root: str | Path | None = None) -> list[Path]:
    """What deletes killed midway left behind (``.deleting-<name>-<pid>`` of a process that is gone), in the
    runs folder and its archive."""
    found = []
    for folder in (Path(root or paths.runs_dir()), archive_dir(root)):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            m = re.fullmatch(re.escape(DELETING) + r".+-(\d+)", entry.name)
            if m and entry.is_dir() and not entry.is_symlink() and int(m.group(1)) != os.getpid() \
                    and not pid_alive(int(m.group(1))):
                found.append(entry)
    return sorted(found)


def finish_interrupted_deletes(root: str | Path | None = None) -> list[tuple[Path, int]]:
    """Finish the deletes ``interrupted_deletes`` finds (the user asked for them; they were renamed out of
    sight first, so nothing else refers to them); returns (folder, bytes freed) for each."""
    from uad.data.cache import disk_usage

    done = []
    for entry in interrupted_deletes(root):
        size = disk_usage(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            done.append((entry, size))
            log.info("finished deleting %s (a delete interrupted earlier)", entry)
    return done

