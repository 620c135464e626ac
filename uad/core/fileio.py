"""Atomic file writes: a reader never sees a half-written file.

Each writer writes to a temporary file in the same folder, flushes it to disk, then renames it over the
target (``os.replace`` is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

TMP_TAG = ".tmp-"  # <folder>.tmp-<pid>: a folder being written by process <pid>
OLD_TAG = ".old-"  # <folder>.old-<pid>: the previous version, moved aside by <pid> during the swap


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile/np.save when the disk fills


def disk_full_error(exc: BaseException, path: str | Path):
    """A DiskFullError naming ``path`` if ``exc`` is a full disk (or quota, or a file size limit), else None.

    A short write is a full disk too: numpy's ``np.save`` reports one as ``OSError("N requested and M
    written")`` with no errno, and going on would keep a truncated file."""
    if isinstance(exc, OSError) and (exc.errno in DISK_FULL or (exc.errno is None and _SHORT_WRITE.search(str(exc)))):
        from uad.core.errors import DiskFullError

        return DiskFullError(path, f"disk full: no space left to write it ({exc.strerror or exc})")
    return None


def write_error(exc: BaseException, path: str | Path):
    """A UADError naming ``path`` for a write that failed because the disk is full, the file system is
    read-only or permission is denied; None for anything else."""
    full = disk_full_error(exc, path)
    if full is not None:
        return full
    if isinstance(exc, OSError) and exc.errno in NOT_WRITABLE:
        from uad.core.errors import DataError

        why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return DataError(path, f"cannot write here ({why})")
    return None


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    ``suffix`` keeps the extension for writers that infer the format from it (nibabel: ``.nii.gz``).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # The name is bounded: a 250-character target name plus a prefix would pass the file system's limit.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:100]}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as exc:
        named = write_error(exc, target)
        if named is not None:
            raise named from exc
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the mode a plain open() would, so a shared results folder
        # stays readable to whoever the user's umask allows.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        named = write_error(exc, target)  # the target, not the temporary name, means something to the user
        if named is not None:
            raise named from exc
        raise


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere the only way is to set it and set it back (briefly process-wide, hence the last resort).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON; NaN/inf become null (bare NaN is not JSON), numpy values become Python."""
    return (json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_json(target: str | Path, obj: Any) -> None:
    """Write JSON atomically (see ``json_bytes``)."""
    write_bytes(target, json_bytes(obj))


def fsync_dir(folder: str | Path) -> None:
    """Make renames and new entries in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_folder(target: str | Path, files: Mapping[str, bytes]) -> Path:
    """Replace the folder ``target`` by one holding exactly ``files`` (name → bytes), as a whole.

    The files are written in order (so the last can mark the folder complete) into ``<target>.tmp-<pid>``
    and fsynced; then the old folder is moved aside to ``<target>.old-<pid>``, the new one renamed into
    place, and the old one removed. A process killed at any point leaves either the old or the new folder
    at ``target``, or (between the two renames) none there but both beside it: ``recover_folder`` puts
    the right one back.
    """
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(target)
    except OSError as exc:
        named = write_error(exc, target)
        if named is not None:
            raise named from exc
        raise
    tmp = parent / f"{target.name}{TMP_TAG}{os.getpid()}"
    old = parent / f"{target.name}{OLD_TAG}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    moved = False
    name = ""
    try:
        tmp.mkdir()
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        name = ""
        fsync_dir(tmp)
        if target.exists():
            os.replace(target, old)
            moved = True
        os.replace(tmp, target)
        fsync_dir(parent)
    except BaseException as exc:
        if moved and not target.exists():
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        named = write_error(exc, target / name if name else target)  # the file it was writing, by its final name
        if named is not None:
            raise named from exc
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def recover_folder(target: str | Path, complete: Callable[[Path], bool], wait_s: float = 5.0) -> bool:
    """Put back ``target`` if a writer died between ``write_folder``'s two renames; True if it exists after.

    A complete new version (``complete(tmp)``) wins over the old one moved aside. While the writer that
    left them is still alive it is mid-swap, so this waits up to ``wait_s`` for it to finish instead.
    """
    target = Path(target)
    deadline = time.monotonic() + wait_s
    while True:
        if target.exists():
            return True
        tmps, olds = _leftovers(target)
        live = [p for p, pid in tmps + olds if pid != os.getpid() and _pid_alive(pid)]
        if not live or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    candidates = [p for p, _ in tmps if complete(p)] + [p for p, _ in olds]
    for candidate in candidates:
        try:
            os.replace(candidate, target)
        except OSError:
            if target.exists():  # another reader recovered it first
                return True
            continue
        fsync_dir(target.parent)
        return True
    return target.exists()


def _leftovers(target: Path) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(tmp folders, old folders) beside ``target`` as (path, writer pid), newest first."""
    found: dict[str, list[tuple[Path, int, float]]] = {TMP_TAG: [], OLD_TAG: []}
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return [], []
    for entry in entries:
        for tag, bucket in found.items():
            prefix = target.name + tag
            if entry.name.startswith(prefix) and entry.name[len(prefix):].isdigit():
                try:
                    bucket.append((entry, int(entry.name[len(prefix):]), entry.stat().st_mtime))
                except OSError:  # removed meanwhile
                    pass
    tmps, olds = ([(p, pid) for p, pid, _ in sorted(b, key=lambda e: -e[2])] for b in found.values())
    return tmps, olds


def _remove_leftovers(target: Path) -> None:
    """Delete what dead writers (or this process) left beside ``target``; a live writer's are its own."""
    if not target.exists():
        # A crash mid-swap may have left the only copy beside it: put it back before clearing leftovers.
        recover_folder(target, lambda p: False, wait_s=0)
    tmps, olds = _leftovers(target)
    for path, pid in tmps + olds:
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    from uad.core.processes import pid_alive

    return pid_alive(pid)


def mtime(path: str | Path) -> float:
    """A file's or folder's modification time, 0.0 when it is gone: a stamp for caches keyed by what changed."""
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


def read_json(path: str | Path) -> Any:
    """A JSON file's content. ValueError for what is not JSON: bad syntax, not UTF-8, or nested so deeply
    that the parser would overflow the stack (Python's json raises RecursionError for that)."""
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except RecursionError:
            raise ValueError("nested too deeply to be a uad file") from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line. A single ``write`` of a short line on an O_APPEND file is not interleaved."""
    line = json.dumps(json_safe(record), allow_nan=False) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
    except OSError as exc:
        named = write_error(exc, path)
        if named is not None:
            raise named from exc
        raise


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file, ignoring a torn last line (a writer killed mid-line)."""
    records = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return records


def json_safe(obj: Any) -> Any:
    """Copy of ``obj`` with numpy values and paths made plain Python, and NaN/±inf replaced by None."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
