"""Process liveness, and which process a recorded pid is: a pid is only ever signalled once its start time
and command line show that it is still the process that was recorded (pids are reused, and a status file
can be edited)."""

from __future__ import annotations

import os
import subprocess
import sys


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



def process_start(pid: int | None) -> int | None:
    """When process ``pid`` started, as an opaque number that differs between two processes given the same
    pid (Linux: clock ticks after boot; elsewhere: seconds, from ``ps``); None when there is no such process."""
    if not pid or isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # a /proc without this pid: no such process
    except (OSError, ValueError, IndexError):
        return None
    return _ps(pid, "lstart", lambda text: int(_seconds(text)))


def process_command(pid: int | None) -> list[str] | None:
    """The command line of process ``pid`` (its arguments), None when unknown or no such process."""
    if not pid or isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except OSError:
        return None
    return _ps(pid, "command", lambda text: text.split())


def own_identity() -> dict:
    """What a process records about itself so that others can tell it from a later process with its pid."""
    return {"pid": os.getpid(), "pid_start": process_start(os.getpid())}


def is_recorded_process(pid, pid_start, expect: tuple[str, ...]) -> tuple[bool, str]:
    """Whether ``pid`` is still the process that was recorded: alive, started when recorded (``pid_start``)
    and running a command that holds every word of ``expect``. (True, "") or (False, why not)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1 or not pid_alive(pid):
        return False, f"process {pid} is not running"
    if pid == os.getpid():
        return False, f"process {pid} is this process"
    started = process_start(pid)
    if pid_start is None or started is None or started != pid_start:
        why = "no start time was recorded for it" if pid_start is None else "it started at another time"
        return False, f"process {pid} is not the one that was recorded ({why}; its id may have been reused)"
    command = process_command(pid) or []
    missing = [w for w in expect if not any(w == a or a.endswith("/" + w) for a in command)]
    if missing:
        return False, f"process {pid} runs {' '.join(command)[:200]!r}, not a uad {' '.join(expect[1:])}"
    return True, ""


def _ps(pid: int, field: str, parse):
    if sys.platform.startswith("win"):
        return None
    try:
        out = subprocess.run(["ps", "-o", f"{field}=", "-p", str(pid)], capture_output=True, text=True, timeout=5).stdout.strip()
        return parse(out) if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _seconds(lstart: str) -> float:
    import time

    return time.mktime(time.strptime(" ".join(lstart.split()), "%a %b %d %H:%M:%S %Y"))
