"""Atomic file writes: a reader never sees a half-written file.

Each writer writes to a temporary file in the same folder, flushes it to disk, then renames it over the
target (``os.replace`` is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(exc: BaseException, path: str | Path):
    """A DiskFullError naming ``path`` if ``exc`` is a full disk (or quota), else None."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        from uad.errors import DiskFullError

        return DiskFullError(path, f"disk full: no space left to write it ({exc.strerror})")
    return None


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    ``suffix`` keeps the extension for writers that infer the format from it (nibabel: ``.nii.gz``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
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
        full = disk_full_error(exc, target)  # the target, not the temporary name, means something to the user
        if full is not None:
            raise full from exc
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


def write_json(target: str | Path, obj: Any) -> None:
    """Write JSON atomically; NaN/inf become null (bare NaN is not JSON), numpy values become Python."""
    write_text(target, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line. A single ``write`` of a short line on an O_APPEND file is not interleaved."""
    line = json.dumps(json_safe(record), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


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
