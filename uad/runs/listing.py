"""Listing runs and shipped checkpoints (torch-free), and which shipped checkpoint suits the active data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uad.core import paths
from uad.runs.archive import archive_dir
from uad.runs.folders import effective_state, read_object, read_status
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

    @property
    def checkpoint_info(self) -> dict[str, Any] | None:
        """checkpoint.json of the run's best (else last) checkpoint, or of the folder itself when it is one;
        read without torch. None when the run has no checkpoint yet."""
        for sub in ("best", "last", "."):
            info = read_object(self.path / sub / "checkpoint.json")
            if info is not None:
                return info
        return None

    @property
    def training_data(self) -> dict[str, Any]:
        """What the run's checkpoint was trained on (name, description, citation, terms); see uad.data.provenance."""
        from uad.data import provenance

        info = self.checkpoint_info
        if info is not None:
            return provenance.training_data(info)
        return provenance.training_data({"data": {"root": (self.config or {}).get("data_root")}})


REAL_SET = "real"  # checkpoints/real/<model>: the shipped set trained on real scans


def list_runs(include_shipped: bool = True, root: str | Path | None = None, archived: bool = False) -> list[RunInfo]:
    """Runs under the runs folder (newest first), then the shipped checkpoints; ``archived``: the archive's runs instead."""
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
        entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=not shipped)
        prefix = f"{REAL_SET}/" if folder.name == REAL_SET and shipped else ""
        for path in entries:
            status = read_status(path)
            # A queued run has no config.json yet: the trainer writes it once its data is ready.
            config = read_object(path / "config.json") or {}
            if not config and not status:
                continue  # not a run folder
            model = config.get("model") or (status or {}).get("model", "?")
            out.append(RunInfo(path, prefix + path.name, model, effective_state(status), shipped, status or {}, config,
                               read_meta(path), archived))
    return out


def suggested_checkpoint(infos: list[RunInfo], demo_active: bool, model: str = "autoencoder") -> RunInfo | None:
    """The shipped checkpoint a user should start from: the demo-trained one on the demo cohort, the
    real-data one on any other dataset (a model trained on synthetic anatomy misreads real scans)."""
    want = model if demo_active else f"{REAL_SET}/{model}"
    shipped = [i for i in infos if i.shipped]
    return next((i for i in shipped if i.name == want), next((i for i in shipped if i.model == model), None))

