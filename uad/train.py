"""The trainer: one code path for every model (the model-specific update lives in ``training_step``).

Run folder contents and states are described in ``uad.runs``. Under ``torchrun`` the trainer runs
data-parallel: each rank reads its share of the slices (DistributedSampler), each optimizer's parameters
are wrapped in torch's DistributedDataParallel, which averages their gradients during backward (the model's
loss runs as that wrapper's forward, see ``AnomalyModel.optimize``), and only rank 0 writes. The
plumbing for that lives in ``uad.distributed``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from uad import checkpoints, distributed, fileio, runs
from uad.data.dataset import SliceDataset
from uad.data.preprocess import PreprocessConfig
from uad.data.splits import DEFAULT_RATIOS, check_case_lists, parse_ratios, split_cases
from uad.errors import ConfigError, TrainingDiverged, UADError
from uad.models import canonical_name, create_model

log = logging.getLogger("uad.train")


@dataclass
class TrainConfig:
    model: str
    data: str | None = None  # dataset folder; None = demo cohort
    modalities: tuple[str, ...] = ("flair",)
    image_size: int = 128
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    max_minutes: float | None = None  # stop (and count as completed) when this much time has passed
    split_ratios: tuple[float, float, float] = DEFAULT_RATIOS
    seed: int = 0
    device: str | None = None  # None = cuda, then mps, then cpu
    num_workers: int = 0  # DataLoader workers; reading the memory-mapped cache is cheap
    model_options: dict[str, Any] = field(default_factory=dict)
    # Explicit patient lists {"train": [...], "val": [...], "test": [...]} instead of ratios + seed
    # (cross-validation folds); every listed case must exist in the dataset.
    cases: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        self.model = canonical_name(self.model)
        self.modalities = tuple(self.modalities)
        self.split_ratios = parse_ratios(self.split_ratios)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.lr}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max minutes must be > 0, got {self.max_minutes}")
        if self.cases is not None:
            self.cases = check_case_lists(self.cases)

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(modalities=self.modalities, image_size=self.image_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["split_ratios"] = list(self.split_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def data_identity(root: Path, manifest_cases: dict[str, Any], demo: bool) -> dict[str, Any]:
    """What a checkpoint records of its training data: the root, and per case its files relative to the
    root with their sizes, so a shared or shipped checkpoint names no other machine's paths and a
    dataset can still be recognised by its cases and file sizes."""
    root = Path(root).resolve()
    cases = {}
    for cid, fp in manifest_cases.items():
        files = []
        for path, size, *_ in fp.get("files", []):
            try:
                rel = str(Path(path).resolve().relative_to(root))
            except ValueError:
                rel = Path(path).name
            files.append({"file": rel, "bytes": int(size)})
        cases[cid] = files
    return {"root": str(root), "demo": demo, "cases": cases}


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _StopFlag:
    """SIGTERM / SIGINT handler. Inside the epoch loop it sets a flag that is checked between batches
    (the loop then saves a checkpoint and marks the run cancelled); before that it interrupts at once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.in_loop = False

    def install(self) -> None:
        def handler(signum, _frame):
            self.reason = signal.Signals(signum).name
            if not self.in_loop:
                raise KeyboardInterrupt(self.reason)

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass


# -- the loop ---------------------------------------------------------------------------------------------
def train(config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          overwrite: bool = False) -> Path:
    """Train ``config.model``; returns the run folder. Marks the run completed, failed or cancelled.

    The folder is locked for the whole run (a second trainer is refused at once). Unless ``resume``, a
    folder that already holds a run is refused, or with ``overwrite`` moved aside to ``<run>.old-<time>``.
    """
    device = pick_device(config.device)
    rank, world = distributed.setup(device)
    try:
        run_dir, lock = _claim_run_dir(run_dir, config, resume, overwrite, rank, world)
        try:
            _train_claimed(config, run_dir, lock, resume, progress, device, rank, world)
        finally:
            if lock is not None:
                lock.release()
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return run_dir


def _claim_run_dir(run_dir, config: TrainConfig, resume: bool, overwrite: bool, rank: int, world: int):
    """Rank 0 picks and locks the run folder; every rank learns it, or the reason it was refused."""
    lock, error = None, None
    if rank == 0:
        run_dir = Path(run_dir) if run_dir else runs.new_run_dir(config.model)
        try:
            lock = runs.claim(run_dir, resume=resume, overwrite=overwrite)
        except UADError as exc:
            error = exc
    if world > 1:
        import torch.distributed as dist

        holder = [str(run_dir) if rank == 0 else None, str(error) if error else None]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
        if holder[1] and error is None:
            error = ConfigError(holder[1])
    if error is not None:
        raise error  # before anything is written: the folder belongs to someone else
    return Path(run_dir), lock


def _train_claimed(config: TrainConfig, run_dir: Path, lock, resume: bool, progress: bool, device, rank: int, world: int) -> None:
    is_main = rank == 0
    handler = _attach_log_file(run_dir) if is_main else None
    if is_main and lock.moved_to is not None:
        log.warning("moved the run that was in %s to %s", run_dir, lock.moved_to)
    stop = _StopFlag()
    stop.install()
    try:
        if is_main:
            runs.write_status(run_dir, "running", pid=os.getpid(), started=time.time(), error=None,
                              epoch=0, epochs=config.epochs, world_size=world, device=str(device))
        _train_loop(config, run_dir, resume, progress, device, rank, world, stop)
    except BaseException as exc:
        if is_main:
            if isinstance(exc, KeyboardInterrupt):
                runs.write_status(run_dir, "cancelled", finished=time.time(), reason=f"received {stop.reason or 'SIGINT'}")
            else:
                message = str(exc) if isinstance(exc, UADError) else f"{type(exc).__name__}: {exc}"
                log.error("run failed: %s\n%s", message, traceback.format_exc())
                extra = {"reason": exc.reason} if isinstance(exc, TrainingDiverged) else {}
                runs.write_status(run_dir, "failed", finished=time.time(), error=message, **extra)
        raise
    finally:
        if handler is not None:  # a later run in this process must not log into this run's train.log
            log.removeHandler(handler)
            handler.close()


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _train_loop(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, device, rank: int, world: int, stop: _StopFlag) -> None:
    from tqdm.auto import tqdm

    from uad.data.demo import resolve_data_root
    from uad.data.store import SliceStore, build_store, store_dir

    is_main = rank == 0
    seed_everything(config.seed)
    data_root = resolve_data_root(config.data, progress=progress and is_main) if is_main else None
    if is_main:
        store = build_store(data_root, config.preprocess, progress=progress)
    distributed.barrier(world)
    if not is_main:
        data_root = resolve_data_root(config.data, progress=False)
        store = SliceStore(store_dir(data_root, config.preprocess))

    labelled = store.labelled_ids
    if config.cases is not None:
        split = config.cases
        missing = sorted(set(split["train"] + split["val"]) - set(labelled))
        if missing:
            raise ConfigError(f"{data_root}: listed training/validation cases are missing or unlabelled: {', '.join(missing)}")
    else:
        split = split_cases(labelled, config.split_ratios, config.seed)
    train_ds = SliceDataset(store, split["train"], healthy_only=True)
    val_ds = SliceDataset(store, split["val"], healthy_only=True)
    if len(train_ds) == 0:
        raise ConfigError(f"no healthy training slices in {data_root} (train cases: {len(split['train'])})")

    model = create_model(config.model, in_channels=len(config.modalities), image_size=config.image_size, **config.model_options)
    model.to(device)
    optimizers = model.configure_optimizers(config.lr)
    if world > 1:
        distributed.broadcast_params(model)
        distributed.wrap_data_parallel(model, optimizers)

    start_epoch, step, best = 0, 0, math.inf
    if resume:
        last = run_dir / "last"
        ckpt = checkpoints.load(last, expect_model=config.model, preprocess=config.preprocess, device=device)
        model.load_state_dict(ckpt.model.state_dict())
        state = checkpoints.load_training_state(last, optimizers)
        start_epoch, step, best = state["epoch"], state["step"], state["best_val_loss"]
        log.info("resumed from epoch %d", start_epoch)

    run_config = {
        "model": config.model, "train": config.to_dict(), "hparams": model.hparams,
        "data_root": str(data_root), "preprocess": config.preprocess.to_dict(),
        "split": {"ratios": None if config.cases else list(config.split_ratios), "seed": config.seed, "cases": split},
        "store": str(store.root), "world_size": world, "device": str(device),
    }
    if is_main and not resume:
        fileio.write_json(run_dir / "config.json", run_config)

    generator = torch.Generator().manual_seed(config.seed)
    sampler = DistributedSampler(train_ds, world, rank, shuffle=True, seed=config.seed) if world > 1 else None
    loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=generator, num_workers=config.num_workers, drop_last=len(train_ds) > config.batch_size * world,
                        pin_memory=device.type == "cuda", persistent_workers=config.num_workers > 0)
    val_loader = DataLoader(val_ds, batch_size=max(config.batch_size, 64), shuffle=False, num_workers=0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    budget_s = config.max_minutes * 60 if config.max_minutes else math.inf
    t_start = time.perf_counter()
    info_base = {
        "preprocess": config.preprocess.to_dict(), "train": config.to_dict(), "split": run_config["split"],
        "data": data_identity(data_root, store.manifest["cases"], demo=config.data is None),
    }
    log.info("training %s on %s: %d healthy train slices, %d val slices, device %s, world %d",
             config.model, data_root, len(train_ds), len(val_ds), device, world)

    # Without validation slices there is no loss to choose by, so best/ follows the latest epoch
    # (rather than staying at the first one forever).
    no_val = len(val_ds) == 0
    best_selection = "latest epoch (no validation slices)" if no_val else "lowest validation loss"
    if no_val:
        log.warning("no validation slices (split ratios %s): best/ follows the latest epoch", list(config.split_ratios))
    end_reason = "completed"
    diverged: str | None = None  # what first became non-finite
    completed_epochs = start_epoch
    progress_frac = start_epoch / config.epochs
    last_status = time.perf_counter()
    stop.in_loop = True
    for epoch in range(start_epoch, config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # per loss: f-AnoGAN's keys change when its phase does, mid-epoch
        n_slices = 0
        t_epoch = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and is_main), leave=False)
        for i, x in enumerate(bar):
            # Progress is the larger of epochs done and time budget used, so multi-phase models
            # (f-AnoGAN) reach every phase under --max-minutes too. Ranks agree on both decisions.
            time_frac = min((time.perf_counter() - t_start) / budget_s, 1.0)
            stop_now = bool(stop.reason) or time_frac >= 1.0 or diverged is not None
            stop_now, time_frac = distributed.agree(stop_now, time_frac, world, device)
            if stop_now:
                break
            progress_frac = max((epoch + i / len(loader)) / config.epochs, time_frac)
            x = x.to(device, non_blocking=True)
            with amp:
                losses = model.training_step(x, optimizers, progress_frac)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
                if diverged is None and not math.isfinite(float(v)):
                    diverged = f"training loss '{k}' became {float(v)} at step {step + 1}, epoch {epoch + 1}"
            n_slices += x.shape[0] * world
            step += 1
            if is_main:
                bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
                if time.perf_counter() - last_status > 2.0:  # smooth progress for watchers within an epoch
                    runs.write_status(run_dir, "running", batch=i + 1, batches=len(loader), step=step)
                    last_status = time.perf_counter()
        bar.close()
        train_s = time.perf_counter() - t_epoch
        # A finite loss can still leave non-finite weights (the update after it); either way nothing from
        # this epoch may be saved over the last good checkpoints.
        if diverged is None and not _finite(model):
            diverged = f"weights became non-finite in epoch {epoch + 1}"
        if distributed.any_rank(diverged is not None, world, device):
            if is_main:
                fileio.append_jsonl(run_dir / "metrics.jsonl", {
                    "epoch": epoch + 1, "step": step, "train": {k: v / counts[k] for k, v in sums.items()},
                    "val_loss": None, "seconds": train_s, "elapsed": time.perf_counter() - t_start,
                    "partial": True, "diverged": True})
            raise TrainingDiverged(run_dir, diverged or "on another rank")
        interrupted = bool(stop.reason)
        if stop.reason:
            end_reason = "cancelled"
        elif time.perf_counter() - t_start >= budget_s:
            end_reason = "time budget"
        completed_epochs = epoch if interrupted else epoch + 1

        distributed.sync_buffers(model, world)
        val_loss = _validate(model, val_loader, device, amp)
        record = {
            "epoch": epoch + 1, "step": step, "train": {k: v / counts[k] for k, v in sums.items()},
            "val_loss": val_loss, "slices_per_s": n_slices / max(train_s, 1e-9), "seconds": train_s,
            "elapsed": time.perf_counter() - t_start, "partial": interrupted,
        }
        selectable = model.checkpoint_selectable(progress_frac)
        improved = selectable and (no_val or (math.isfinite(val_loss) and val_loss < best))
        if improved and not no_val:
            best = val_loss
        if is_main:
            fileio.append_jsonl(run_dir / "metrics.jsonl", record)
            info = {**info_base, "epoch": completed_epochs, "step": step, "val_loss": val_loss, "best_val_loss": best,
                    "best_selection": best_selection}
            checkpoints.save(run_dir / "last", model, info, optimizers=optimizers,
                             training_state={"epoch": completed_epochs, "step": step, "best_val_loss": best})
            if improved or not (run_dir / "best").exists():
                checkpoints.save(run_dir / "best", model, info)
            runs.write_status(run_dir, "running", epoch=completed_epochs, step=step, val_loss=val_loss, best_val_loss=best,
                              best_selection=best_selection)
            log.info("epoch %d: %s val %.5f (%.0f slices/s)", epoch + 1,
                     " ".join(f"{k} {v:.5f}" for k, v in record["train"].items()), val_loss, record["slices_per_s"])
        if end_reason != "completed":
            break

    checksums = distributed.rank_checksums(model, world)  # lets users (and the tests) see that ranks stayed in sync
    if is_main:
        if checksums:
            runs.write_status(run_dir, "running", rank_weight_checksums=checksums)
        if end_reason == "cancelled":
            runs.write_status(run_dir, "cancelled", finished=time.time(), reason=f"received {stop.reason}", epoch=completed_epochs)
        else:
            runs.write_status(run_dir, "completed", finished=time.time(), reason=end_reason, epoch=completed_epochs)
        log.info("run %s: %s", end_reason, run_dir)


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


@torch.no_grad()
def _validate(model, loader, device, amp) -> float:
    if len(loader.dataset) == 0:
        return float("nan")
    model.eval()
    total, n = 0.0, 0
    for x in loader:
        x = x.to(device)
        with amp:
            loss = float(model.validation_loss(x))
        total += loss * x.shape[0]
        n += x.shape[0]
    model.train()
    return total / n
