"""Project errors. Every error a user can cause names the file (or case) and the reason."""

from __future__ import annotations

from pathlib import Path


class UADError(Exception):
    """Base class for errors that are the user's input, not a bug."""


class DataError(UADError):
    """A data file or folder is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)

    def __reduce__(self):  # re-raised from worker processes: pickle the constructor's arguments
        return type(self), (self.path, self.reason)


class DiskFullError(DataError):
    """No space left (or quota exceeded) while writing ``path``: every later write would fail the same way."""


class CheckpointError(UADError):
    """A checkpoint is missing, corrupt, or does not fit the requested model or data."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)

    def __reduce__(self):  # re-raised from worker processes: pickle the constructor's arguments
        return type(self), (self.path, self.reason)


class ConfigError(UADError):
    """An option value is out of range or inconsistent."""


class TrainingDiverged(UADError):
    """The training loss or the weights became NaN or infinite (usually: the learning rate is too high)."""

    reason = "diverged"

    def __init__(self, run_dir: str | Path, detail: str):
        self.path = Path(run_dir)
        super().__init__(f"{run_dir}: training diverged ({detail}); best/ and last/ keep the last epoch whose "
                         "weights were finite, if any. Try a lower --lr")
