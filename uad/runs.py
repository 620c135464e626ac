"""Run folders: one per training run, the single source of truth for its state.

    runs/<YYYYmmdd-HHMMSS>-<model>/
        config.json      what was asked (model, data, preprocessing, split, training settings)
        status.json      queued | running | completed | failed | cancelled (+ pid, error, times); replaced atomically
        metrics.jsonl    one line per epoch, append-only
        train.log        the trainer's log
        last/, best/     checkpoints (model.safetensors + checkpoint.json)
        eval/            evaluation results (metrics.json, slices.csv, curves)

Every reader (CLI, app, other browser tabs, a restarted app) sees the same state because it lives on disk.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uad import fileio, paths

STATES = ("queued", "running", "completed", "failed", "cancelled")
FINAL_STATES = ("completed", "failed", "cancelled")


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
    return _read_object(Path(run_dir) / "status.json")


def _read_object(path: Path) -> dict[str, Any] | None:
    try:
        obj = fileio.read_json(path)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return fileio.read_jsonl(Path(run_dir) / "metrics.jsonl")


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

    @property
    def eval_metrics(self) -> dict[str, Any] | None:
        try:
            return fileio.read_json(self.path / "eval" / "metrics.json")
        except (FileNotFoundError, ValueError):
            return None


def list_runs(include_shipped: bool = True, root: str | Path | None = None) -> list[RunInfo]:
    """Runs under the runs folder (newest first), then the shipped checkpoints."""
    out: list[RunInfo] = []
    sources = [(Path(root or paths.runs_dir()), False)]
    if include_shipped:
        sources.append((paths.checkpoints_dir(), True))
    for folder, shipped in sources:
        if not folder.is_dir():
            continue
        entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=not shipped)
        for path in entries:
            status = read_status(path)
            # A queued run has no config.json yet: the trainer writes it once its data is ready.
            config = _read_object(path / "config.json") or {}
            if not config and not status:
                continue  # not a run folder
            model = config.get("model") or (status or {}).get("model", "?")
            out.append(RunInfo(path, path.name, model, effective_state(status), shipped, status or {}, config))
    return out
