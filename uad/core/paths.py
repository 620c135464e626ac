"""Where the project keeps data, caches and runs.

Everything the toolkit writes lives under one home folder: the repository root by default, or
``$UAD_HOME`` when set (tests point it at a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def home() -> Path:
    return Path(os.environ.get("UAD_HOME", REPO_ROOT)).resolve()


def data_dir() -> Path:
    return home() / "data"


def demo_dir() -> Path:
    """The demo cohort's folder, used when no dataset is given."""
    return data_dir() / "demo"


def cache_dir() -> Path:
    return Path(os.environ.get("UAD_CACHE_DIR", data_dir() / "cache")).resolve()


def runs_dir() -> Path:
    return home() / "runs"


def checkpoints_dir() -> Path:
    """Pretrained checkpoints shipped with the repository (``$UAD_CHECKPOINTS`` overrides, e.g. in tests)."""
    return Path(os.environ.get("UAD_CHECKPOINTS", REPO_ROOT / "checkpoints")).resolve()


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` lies in the shipped checkpoints' folder, which uad reads and never writes."""
    try:
        Path(path).resolve().relative_to(checkpoints_dir())
    except (ValueError, OSError, RuntimeError):
        return False
    return True
