"""Background processes: ``python -m uad ...`` started in its own session, its output to a log, its pid on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from uad.core import fileio, paths, processes
from uad.runs import folders

LAUNCH = "launch.json"  # beside status.json: pid of the process started here, its command line and log


STDOUT = "stdout.log"


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
    fileio.write_json(info_path, {"pid": proc.pid, "pid_start": processes.process_start(proc.pid), "argv": argv,
                                  "started": time.time(), "log": log_path.name})
    return proc


def launch_info(path: Path) -> dict[str, Any]:
    """A JSON object file written here or by the trainer ({} when missing or unreadable)."""
    return folders.read_object(path) or {}


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

