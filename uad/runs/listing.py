"""Listing runs and shipped checkpoints (torch-free), and which shipped checkpoint suits the active data."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uad.checkpoints.record import META as CHECKPOINT_META
from uad.checkpoints.record import CheckpointRecord
from uad.core import paths
from uad.core.errors import CheckpointError, UADError
from uad.runs.archive import archive_dir
from uad.runs.folders import effective_state, read_config, read_status
from uad.runs.meta import read_meta


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

    @functools.cached_property
    def checkpoint(self) -> CheckpointRecord | None:
        """The record of the run's best (else last) checkpoint, or of the folder itself when it is one, read
        and checked without torch (``uad.checkpoints.record``). None when the run has no checkpoint yet, or
        when its record is damaged (logged, and said again by whatever loads the checkpoint)."""
        for sub in ("best", "last", "."):
            if (self.path / sub / CHECKPOINT_META).is_file():
                try:
                    return CheckpointRecord.read(self.path / sub)
                except CheckpointError as exc:
                    log.warning("%s", exc)
                    return None
        return None

    @property
    def trained_root(self) -> Path | None:
        """The folder the run's checkpoint was trained on (from its record), None when not known."""
        record = self.checkpoint
        return record.trained_root if record is not None else None

    @property
    def training_data(self) -> dict[str, Any]:
        """What the run's checkpoint was trained on (name, description, citation, terms); see uad.data.provenance."""
        from uad.data import provenance

        record = self.checkpoint
        if record is not None:
            return record.training_description
        root = (self.config or {}).get("data_root")
        return provenance.training_data(None, False, root if isinstance(root, str) else None)


log = logging.getLogger("uad.runs")

REAL_SET = "real"  # checkpoints/real/<model>: the shipped set trained on real scans


@dataclass(frozen=True)
class SkippedRun:
    """A folder that looks like a run but cannot be listed: which, and why (naming the file)."""

    path: Path
    reason: str


def read_run(path: Path, name: str, shipped: bool = False, archived: bool = False) -> RunInfo | None:
    """The RunInfo of one folder, every file checked (status, config, labels); None when it is no run
    folder; a UADError naming the file when one of them is damaged."""
    status = read_status(path)
    # A queued run has no config.json yet: the trainer writes it once its data is ready.
    config = read_config(path) or {}
    if not config and not status:
        return None
    model = config.get("model") or (status or {}).get("model") or "?"
    return RunInfo(path, name, model, effective_state(status), shipped, status or {}, config, read_meta(path), archived)


def list_runs(include_shipped: bool = True, root: str | Path | None = None, archived: bool = False,
              skipped: list[SkippedRun] | None = None) -> list[RunInfo]:
    """Runs under the runs folder (newest first), then the shipped checkpoints; ``archived``: the archive's runs instead.

    One damaged folder never hides the others: it is left out with a warning naming the file and the
    problem, and appended to ``skipped`` when given."""
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
        try:
            entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=not shipped)
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror or exc)
            continue
        prefix = f"{REAL_SET}/" if folder.name == REAL_SET and shipped else ""
        for path in entries:
            try:
                info = read_run(path, prefix + path.name, shipped, archived)
            except UADError as exc:
                if skipped is not None:  # the caller says so
                    skipped.append(SkippedRun(path, str(exc)))
                else:
                    log.warning("skipped %s: %s", path, exc)
                continue
            if info is not None:
                out.append(info)
    return out


def suggested_checkpoint(infos: list[RunInfo], demo_active: bool, model: str = "autoencoder") -> RunInfo | None:
    """The shipped checkpoint a user should start from: the demo-trained one on the demo cohort, the
    real-data one on any other dataset (a model trained on synthetic anatomy misreads real scans)."""
    want = model if demo_active else f"{REAL_SET}/{model}"
    shipped = [i for i in infos if i.shipped]
    return next((i for i in shipped if i.name == want), next((i for i in shipped if i.model == model), None))

