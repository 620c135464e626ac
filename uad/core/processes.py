"""Process liveness and the pid-tagged names of folders a process is writing or removing."""

from __future__ import annotations

import os


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

