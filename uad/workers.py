"""Process pools that are safe to start from anywhere: a script, pytest, or a Streamlit app."""

from __future__ import annotations

import sys
import types
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, Iterable


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
    """spawn, not fork: the caller may hold torch threads or a web server."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
