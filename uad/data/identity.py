"""Dataset identity: one id, label and root per folder, used wherever a folder is compared or hashed."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from uad.core import paths

DEMO_ID = "demo"
LEGACY = "(legacy)"  # the dataset id shown for an old evaluation that recorded no data root


@dataclass(frozen=True)
class DatasetRef:
    """Which folder an evaluation was run on: a stable id (folder names in ``eval/``), a label, the root."""

    id: str
    label: str
    root: str

    @property
    def title(self) -> str:
        return f"{self.label} ({self.root})" if self.root and self.label != self.root else (self.label or self.root)

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "label": self.label, "root": self.root}


def repo_path(root: str | Path) -> Path:
    """A path as recorded by uad, on this machine: relative ones are relative to the repository."""
    p = Path(root).expanduser()
    # Shipped checkpoints record their data relative to the repository, so no machine's paths leak.
    return (p if p.is_absolute() else paths.REPO_ROOT / p).resolve()


MAX_SLUG = 60  # folder names derived from a dataset's name stay far below every file system's limit


def folder_key(root: str | Path) -> str:
    """``<name>-<hash of the absolute path>``: the one name derived from a folder (slice cache entries, evaluation
    folders), bounded in length whatever the folder is called."""
    resolved = repo_path(root)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", resolved.name).strip("-.")[:MAX_SLUG].strip("-.") or "dataset"
    return f"{slug}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


def same_folder(a: str | Path | None, b: str | Path | None) -> bool:
    """Whether two recorded or given paths name the same folder on this machine."""
    if not a or not b:
        return False
    try:
        return repo_path(a) == repo_path(b)
    except OSError:
        return False


def dataset_ref(root: str | Path | None) -> DatasetRef:
    """The dataset identity of a folder: ``demo`` for the demo cohort, else its ``folder_key``."""
    if root is None or str(root) == "":
        return DatasetRef(LEGACY, "unknown dataset (not recorded)", "")
    resolved = repo_path(root)
    if resolved == paths.demo_dir().resolve() or Path(root).as_posix().rstrip("/") == "data/demo":
        return DatasetRef(DEMO_ID, "demo cohort", str(resolved))
    return DatasetRef(folder_key(resolved), resolved.name, str(resolved))


def is_demo(root: str | Path | None) -> bool:
    return root is not None and dataset_ref(root).id == DEMO_ID


def trained_data_root(root: str | None, demo: bool = False) -> Path | None:
    """The folder a checkpoint was trained on, from what its record says (``uad.checkpoints.record``): the
    demo cohort wherever this home keeps it, else the recorded root; None when not recorded."""
    if demo:
        return paths.demo_dir()
    return repo_path(root) if root else None

