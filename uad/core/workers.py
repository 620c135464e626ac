"""Process pools that are safe to start from anywhere: a script, pytest, or a Streamlit app."""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, Iterable

PARENT_POLL_S = 0.25  # how often a worker checks that the process that started it is still there


def submit_all(pool: ProcessPoolExecutor, fn: Callable, arg_tuples: Iterable[tuple[Any, ...]]) -> list[Future]:
    """Submit ``fn(*args)`` for each tuple while the caller's ``__main__`` is hidden.

    Spawned workers re-run the parent's main script; inside Streamlit (or after AppTest) that is an app
    page, which must not run in a worker. Workers only need ``fn``'s module, which they import by name.
    """
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        return [pool.submit(fn, *args) for args in arg_tuples]
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """spawn, not fork: the caller may hold torch threads or a web server.

    Each worker exits as soon as the process that started it is gone: without that, a parent killed with
    SIGKILL leaves its workers running the tasks already queued to them (minutes, hundreds of MB each).
    """
    # PR_SET_PDEATHSIG fires when the *thread* that forked the worker ends, and the pool forks from the
    # thread that submits. Only the main thread lives as long as its process, so only there is it safe.
    deathsig = threading.current_thread() is threading.main_thread()
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_watch_parent,
                               initargs=(os.getpid(), deathsig))


def _watch_parent(parent: int, deathsig: bool) -> None:
    """Pool initializer: end this worker when ``parent`` dies (the kernel's signal where there is one,
    and a thread polling the parent id everywhere, which also covers a worker started by another thread)."""
    if deathsig:
        _set_parent_death_signal()
    if os.getppid() != parent:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:  # an orphan is re-parented, so its parent id changes
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # the whole process, from this thread: nobody is left to take the result

    threading.Thread(target=watch, name="uad-parent-watch", daemon=True).start()


def _set_parent_death_signal() -> None:
    """Linux: have the kernel SIGKILL this process when its parent thread ends (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: the polling thread still does it
        pass
