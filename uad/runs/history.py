"""A run's training history as the monitor shows it: one record per epoch (metrics.jsonl), the training losses
every few steps (steps.jsonl) and the sample reconstructions kept per epoch (samples/), read without torch.

Readers are tolerant: a line that is not a JSON object, or a field of the wrong type, is left out (never an
error), and a run written before a field existed simply lacks it (no learning rate recorded: no curve).

**Each epoch once.** A run stopped mid-epoch (cancelled, its time budget, divergence) records that partial
epoch; resumed, it trains the epoch again from its start. A record at a position the history already
reached supersedes everything recorded from that epoch's start on, so a resumed run's history holds each
epoch once, as last trained, and the step-loss line never runs backwards. A partial epoch that was never
trained again stays, marked partial, at the position where it stopped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from uad.core import fileio
from uad.runs import folders


def _finite(v: Any) -> float | None:
    """A finite float, None for anything else (missing, null, NaN, text, a bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _count(v: Any) -> int | None:
    """A non-negative int, None otherwise."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _numbers(d: Any) -> dict[str, float]:
    """{name: finite float} of a JSON object; non-finite or non-numeric values are left out."""
    if not isinstance(d, dict):
        return {}
    return {str(k): f for k, v in d.items() if (f := _finite(v)) is not None}


@dataclass(frozen=True)
class EpochRecord:
    """One epoch as metrics.jsonl records it."""

    epoch: int  # 1-based
    position: float  # epochs from the start where the record was made: ``epoch``, less for a partial epoch
    train: dict[str, float]  # mean training losses over the epoch's batches
    val_loss: float | None
    slices_per_s: float | None
    seconds: float | None
    lr: dict[str, float]  # learning rate per optimizer at the epoch's end; {} when not recorded
    gpu_memory_mb: float | None  # peak GPU memory allocated during the epoch; None off a GPU or not recorded
    partial: bool = False  # stopped before its last batch

    @classmethod
    def parse(cls, r: Any) -> "EpochRecord | None":
        if not isinstance(r, dict):
            return None
        epoch = _count(r.get("epoch"))
        if not epoch:
            return None
        partial = r.get("partial") is True
        position = float(epoch)
        done = r.get("batches")
        if partial and isinstance(done, list) and len(done) == 2 and _count(done[0]) is not None and _count(done[1]):
            position = epoch - 1 + min(done[0] / done[1], 1.0)
        lr = r.get("lr")
        lrs = {"lr": f} if (f := _finite(lr)) is not None else _numbers(lr)
        return cls(epoch, position, _numbers(r.get("train")), _finite(r.get("val_loss")), _finite(r.get("slices_per_s")),
                   _finite(r.get("seconds")), lrs, _finite(r.get("gpu_memory_mb")), partial)


@dataclass(frozen=True)
class StepRecord:
    """The mean training losses over a few steps (steps.jsonl)."""

    step: int | None
    position: float  # epochs from the start: 2.5 = half-way through the third epoch
    train: dict[str, float]

    @classmethod
    def parse(cls, r: Any) -> "StepRecord | None":
        if not isinstance(r, dict):
            return None
        position = _finite(r.get("epoch"))
        if position is None or position <= 0:  # a step record is written after at least one batch
            return None
        return cls(_count(r.get("step")), position, _numbers(r.get("train")))


def _epoch_start(position: float) -> float:
    """The start of the epoch a position lies in: (E - 1, E] belongs to epoch E."""
    return max(math.ceil(position) - 1, 0)


def latest_per_epoch(records: Sequence[EpochRecord]) -> tuple[list[EpochRecord], int]:
    """The epoch records with each epoch once (a later record of an epoch supersedes it and every record
    after it, in file order); returns (kept, how many were superseded)."""
    kept: list[EpochRecord] = []
    dropped = 0
    for r in records:
        while kept and kept[-1].epoch >= r.epoch:
            kept.pop()
            dropped += 1
        kept.append(r)
    return kept, dropped


def monotonic_steps(records: Sequence[StepRecord]) -> tuple[list[StepRecord], int]:
    """The step records along one forward line: a record at or before a position already reached starts
    its epoch again, so every record from that epoch's start on is superseded; returns (kept, dropped)."""
    kept: list[StepRecord] = []
    dropped = 0
    for r in records:
        if kept and r.position <= kept[-1].position:
            start = _epoch_start(r.position)
            while kept and kept[-1].position > start:
                kept.pop()
                dropped += 1
        kept.append(r)
    return kept, dropped


@dataclass(frozen=True)
class History:
    """A run's epochs and steps, each epoch once (see the module's docstring)."""

    epochs: list[EpochRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    superseded: int = 0  # records of epochs trained again after a stop, left out

    @property
    def loss_keys(self) -> list[str]:
        """The training losses recorded, in the order first seen (f-AnoGAN's change with its phase)."""
        keys: dict[str, None] = {}
        for r in [*self.epochs, *self.steps]:
            keys.update(dict.fromkeys(r.train))
        return list(keys)

    @property
    def main_loss(self) -> str | None:
        """The loss a run is summarised by: ``loss`` when recorded, else its first."""
        keys = self.loss_keys
        return "loss" if "loss" in keys else (keys[0] if keys else None)

    @property
    def lr_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        for r in self.epochs:
            keys.update(dict.fromkeys(r.lr))
        return list(keys)

    @property
    def has_gpu_memory(self) -> bool:
        return any(r.gpu_memory_mb is not None for r in self.epochs)

    @property
    def best_val_loss(self) -> float | None:
        values = [r.val_loss for r in self.epochs if r.val_loss is not None and not r.partial]
        return min(values) if values else None

    @property
    def last(self) -> EpochRecord | None:
        return self.epochs[-1] if self.epochs else None


def history(epoch_lines: Sequence[Any], step_lines: Sequence[Any]) -> History:
    """The history of raw metrics.jsonl and steps.jsonl lines (anything not a valid record is left out)."""
    epochs, dropped_e = latest_per_epoch([r for r in map(EpochRecord.parse, epoch_lines) if r is not None])
    steps, dropped_s = monotonic_steps([r for r in map(StepRecord.parse, step_lines) if r is not None])
    return History(epochs, steps, dropped_e + dropped_s)


def read_history(run_dir: str | Path) -> History:
    """A run folder's history; an empty one when it has no records yet (or none readable)."""
    return history(folders.read_metrics(run_dir), folders.read_steps(run_dir))


# -- smoothing -----------------------------------------------------------------------------------------------
def ema(values: Sequence[float | None], weight: float) -> list[float | None]:
    """Exponential moving average as TensorBoard draws it (debiased, so the first points are not pulled to 0);
    ``weight`` 0 leaves the values as they are. Missing values stay missing and do not reset the average."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out: list[float | None] = []
    acc, n = 0.0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        acc = acc * weight + (1 - weight) * v
        n += 1
        out.append(acc / (1 - weight ** n))
    return out


# -- sample reconstructions per epoch ---------------------------------------------------------------------------
SAMPLE_FILE = re.compile(r"^epoch-(\d{4,})\.png$")
SAMPLE_EPOCHS_KEPT = 40  # pictures kept per run (about 100 kB each at 128 px), spread over its epochs


def sample_path(run_dir: str | Path, epoch: int) -> Path:
    """Where the trainer keeps the sample reconstructions after ``epoch``."""
    return Path(run_dir) / folders.SAMPLES_DIR / f"epoch-{epoch:04d}.png"


def samples_by_epoch(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, picture) of every kept sample picture, in epoch order; a run written before pictures were kept
    per epoch gives its one latest picture (samples.png, with the epoch samples.json names)."""
    folder = Path(run_dir) / folders.SAMPLES_DIR
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = SAMPLE_FILE.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
    if found:
        return sorted(found)
    legacy = Path(run_dir) / folders.SAMPLES
    if legacy.is_file():
        epoch = _count((folders.read_object(Path(run_dir) / folders.SAMPLES_INFO) or {}).get("epoch"))
        return [(epoch or 0, legacy)]
    return []


def samples_info(run_dir: str | Path) -> dict[str, Any]:
    """What the sample pictures show (samples.json): ``rows`` (names of the picture's rows) and ``slices``
    ([{case_id, slice_index}] left to right), each only when recorded with the right type."""
    raw = folders.read_object(Path(run_dir) / folders.SAMPLES_INFO) or {}
    out: dict[str, Any] = {}
    rows = raw.get("rows")
    if isinstance(rows, list) and all(isinstance(r, str) for r in rows):
        out["rows"] = rows
    slices = raw.get("slices")
    if isinstance(slices, list) and all(isinstance(s, dict) and isinstance(s.get("case_id"), str)
                                        and _count(s.get("slice_index")) is not None for s in slices):
        out["slices"] = [{"case_id": s["case_id"], "slice_index": s["slice_index"]} for s in slices]
    return out


def thin_epochs(epochs: Sequence[int], keep: int) -> list[int]:
    """Which of ``epochs`` (sorted) to drop so that at most ``keep`` remain, spread over the run: the first
    and the latest always stay; each drop removes the epoch whose neighbours are closest (the earlier on ties),
    so the kept epochs stay about evenly spaced however long the run."""
    if keep < 2:
        raise ValueError(f"keep at least 2 sample epochs, got {keep}")
    left = sorted(epochs)
    dropped = []
    while len(left) > keep:
        gaps = [(left[i + 1] - left[i - 1], i) for i in range(1, len(left) - 1)]
        _, i = min(gaps)
        dropped.append(left.pop(i))
    return dropped


def save_samples(run_dir: str | Path, epoch: int, png: bytes, info: dict[str, Any]) -> None:
    """Keep the sample picture of ``epoch`` (samples/epoch-NNNN.png, and samples.png as the latest) with what it
    shows (samples.json), then thin the kept pictures to ``SAMPLE_EPOCHS_KEPT``. Every file is written atomically."""
    run_dir = Path(run_dir)
    path = sample_path(run_dir, epoch)
    path.parent.mkdir(exist_ok=True)
    fileio.write_bytes(path, png)
    fileio.write_bytes(run_dir / folders.SAMPLES, png)
    fileio.write_json(run_dir / folders.SAMPLES_INFO, {**info, "epoch": epoch})
    kept = [e for e, _ in samples_by_epoch(run_dir)]
    for e in thin_epochs(kept, SAMPLE_EPOCHS_KEPT):
        sample_path(run_dir, e).unlink(missing_ok=True)
