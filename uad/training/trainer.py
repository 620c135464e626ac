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
import random
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from uad.checkpoints import weights as ckpt_weights
from uad.core import fileio, processes
from uad.core.devices import pick_device
from uad.core.errors import ConfigError, TrainingDiverged, UADError
from uad.data.dataset import DeviceLoader, SliceDataset
from uad.data.splits import split_cases
from uad.models import create_model
from uad.runs import folders, history
from uad.training import distributed
from uad.training.config import TrainConfig, check_config

log = logging.getLogger("uad.train")


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


def train(config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          overwrite: bool = False) -> Path:
    """Train ``config.model``; returns the run folder. Marks the run completed, failed or cancelled.

    The folder is locked for the whole run (a second trainer is refused at once). Unless ``resume``, a
    folder that already holds a run is refused, or with ``overwrite`` moved aside to ``<run>.old-<time>``.
    Settings the trainer would refuse later are refused first, before any folder is made or written.
    """
    check_config(config)
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
        run_dir = Path(run_dir) if run_dir else folders.new_run_dir(config.model)
        try:
            lock = folders.claim(run_dir, resume=resume, overwrite=overwrite)
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
    monitor = _Monitor(run_dir, config, is_main)
    try:
        if is_main:
            # pid and start time: `runs cancel` signals this process only while both still match.
            folders.write_status(run_dir, "running", **processes.own_identity(), started=time.time(), error=None, end=None, reason=None,
                              epoch=0, epochs=config.epochs, world_size=world, device=str(device))
        _train_loop(config, run_dir, resume, progress, device, rank, world, stop, monitor)
    except BaseException as exc:
        if is_main:
            try:
                if isinstance(exc, KeyboardInterrupt):
                    reason = f"received {stop.reason or 'SIGINT'}"
                    folders.write_status(run_dir, "cancelled", finished=time.time(), reason=reason,
                                         end=monitor.end("cancelled", reason=reason))
                else:
                    message = str(exc) if isinstance(exc, UADError) else f"{type(exc).__name__}: {exc}"
                    log.error("run failed: %s\n%s", message, traceback.format_exc())
                    extra = {"reason": exc.reason} if isinstance(exc, TrainingDiverged) else {}
                    folders.write_status(run_dir, "failed", finished=time.time(), error=message,
                                         end=monitor.end("failed", reason=message), **extra)
            except (UADError, OSError) as status_exc:  # e.g. the same full disk: the first error is the one to report
                log.error("could not record the run's end in status.json: %s", status_exc)
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


STATUS_EVERY_S = 2.0  # at most one status.json rewrite per this many seconds within an epoch


STEP_POINTS_PER_EPOCH = 20  # about this many steps.jsonl lines per epoch ...


STEP_LOG_MAX = 50  # ... but at least one every this many steps


N_SAMPLES = 4  # fixed validation slices reconstructed after every epoch (samples/, samples.png)


def log_every(batches: int) -> int:
    """How many steps one ``steps.jsonl`` line averages over, for an epoch of ``batches`` batches."""
    return max(1, min(STEP_LOG_MAX, batches // STEP_POINTS_PER_EPOCH))


class _Monitor:
    """What a watcher of the run sees while it trains (rank 0 writes, other ranks only track position).

    * ``status.json``: the batch within the epoch, steps, elapsed time and an ETA, at most every
      ``STATUS_EVERY_S`` seconds (the file is replaced atomically, see ``runs.write_status``);
    * ``steps.jsonl``: the mean training losses over every ``log_every(batches)`` steps, append-only;
    * where the run stands (epoch, batch), so its end state can say where it stopped.
    """

    def __init__(self, run_dir: Path, config: TrainConfig, is_main: bool):
        self.run_dir, self.config, self.is_main = run_dir, config, is_main
        self.epoch = 0  # 0-based epoch in progress
        self.batch = 0  # batches done in it
        self.batches = 0  # batches per epoch
        self.epochs_done = 0
        self.every = 1
        self._window: dict[str, list[float]] = {}
        self._last_write = -math.inf
        self._t0 = time.perf_counter()
        self._steps_here = 0  # steps taken by this process (a resumed run's earlier steps took other time)

    def begin(self, start_epoch: int, batches: int, budget_s: float) -> None:
        self.epoch, self.epochs_done, self.batches, self.budget_s = start_epoch, start_epoch, batches, budget_s
        self.every = log_every(batches)
        self._t0 = time.perf_counter()
        if self.is_main:
            folders.write_status(self.run_dir, "running", current_epoch=start_epoch + 1, batch=0, batches=batches,
                              log_every=self.every, elapsed=0.0, eta=None)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = epoch, 0
        self._window = {}

    def eta(self) -> float | None:
        """Seconds left: the time per step so far times the steps left, capped by the time budget left."""
        elapsed = time.perf_counter() - self._t0
        if not self._steps_here:
            return None
        left = (self.config.epochs - self.epoch - 1) * self.batches + (self.batches - self.batch)
        eta = elapsed / self._steps_here * max(left, 0)
        return min(eta, max(self.budget_s - elapsed, 0.0))

    def after_batch(self, step: int, losses: dict[str, float]) -> None:
        self.batch += 1
        self._steps_here += 1
        for k, v in losses.items():
            self._window.setdefault(k, []).append(float(v))
        if not self.is_main:
            return
        if step % self.every == 0 or self.batch == self.batches:
            self._flush_steps(step)
        now = time.perf_counter()
        if now - self._last_write >= STATUS_EVERY_S:
            self._last_write = now
            folders.write_status(self.run_dir, "running", current_epoch=self.epoch + 1, batch=self.batch, batches=self.batches,
                              step=step, elapsed=now - self._t0, eta=self.eta())

    def _flush_steps(self, step: int) -> None:
        if not self._window:
            return
        means = {k: (sum(v) / len(v) if all(math.isfinite(x) for x in v) else None) for k, v in self._window.items()}
        n = max(len(v) for v in self._window.values())
        fileio.append_jsonl(self.run_dir / folders.STEPS, {
            "step": step, "epoch": self.epoch + self.batch / max(self.batches, 1), "steps": n, "train": means,
            "elapsed": time.perf_counter() - self._t0})
        self._window = {}

    def end_epoch(self, epochs_done: int, step: int) -> None:
        self.epochs_done = epochs_done
        if self.is_main:
            self._flush_steps(step)
            # Validation and checkpoints took time too: a fresh estimate, not the last one within the epoch.
            folders.write_status(self.run_dir, "running", eta=self.eta(), elapsed=time.perf_counter() - self._t0)

    def end(self, kind: str, reason: str | None = None) -> dict[str, Any]:
        """The end state recorded in status.json: what ended the run, and where (epoch and batch)."""
        out: dict[str, Any] = {"kind": kind, "epoch": self.epoch + 1, "batch": self.batch, "batches": self.batches,
                               "epochs": self.config.epochs, "epochs_done": self.epochs_done,
                               "elapsed": time.perf_counter() - self._t0}
        if kind == "time_budget":
            out["max_minutes"] = self.config.max_minutes
        if reason:
            out["reason"] = reason
        return out


def _save_samples(model, x: torch.Tensor, run_dir: Path, epoch: int, slices: list[dict[str, Any]]) -> None:
    """Input, reconstruction and |difference| of the fixed sample slices, as one grey PNG (rows), kept for this
    epoch (``uad.runs.history.save_samples``: samples/epoch-NNNN.png, samples.png the latest)."""
    import cv2

    model.eval()
    with torch.no_grad():
        recon = model.reconstruct(x).float()
    model.train()
    first = lambda t: t[:, 0].clamp(0, 1).cpu().numpy()  # noqa: E731 - the first input channel
    rows = [first(x.float()), first(recon), first((x.float() - recon).abs())]
    gap = 2
    tiles = [np.concatenate([np.pad(t, ((0, 0), (0, gap))) for t in row], axis=1)[:, :-gap] for row in rows]
    grid = np.concatenate([np.pad(r, ((0, gap), (0, 0))) for r in tiles], axis=0)[:-gap]
    ok, buf = cv2.imencode(".png", (grid * 255).astype(np.uint8))
    if ok:
        history.save_samples(run_dir, epoch, buf.tobytes(), {"slices": slices, "rows": ["input", "reconstruction", "|difference|"]})


@dataclass
class _Session:
    """What one training process works with, set up once by ``_setup``."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    rank: int
    world: int
    progress: bool
    data_root: Path
    model: Any
    optimizers: dict[str, torch.optim.Optimizer]
    train_ds: SliceDataset
    val_ds: SliceDataset
    loader: DataLoader | DeviceLoader
    sampler: DistributedSampler | None
    val_loader: DataLoader
    amp: Any
    info_base: dict[str, Any]
    sample_x: torch.Tensor | None
    start_epoch: int = 0
    step: int = 0
    best: float = math.inf
    budget_s: float = math.inf
    t_start: float = 0.0
    progress_frac: float = 0.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def no_val(self) -> bool:
        # Without validation slices there is no loss to choose by, so best/ follows the latest epoch
        # (rather than staying at the first one forever).
        return len(self.val_ds) == 0

    @property
    def best_selection(self) -> str:
        return "latest epoch (no validation slices)" if self.no_val else "lowest validation loss"


@dataclass
class _EpochResult:
    sums: dict[str, float]
    counts: dict[str, int]  # per loss: f-AnoGAN's keys change when its phase does, mid-epoch
    n_slices: int
    batches: int  # batches done (fewer than the loader's when stopped mid-epoch)
    seconds: float
    stop: str | None  # "cancelled" | "time budget" | None
    diverged: str | None  # what first became non-finite

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}


def _train_loop(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, device, rank: int, world: int,
                stop: _StopFlag, monitor: _Monitor) -> None:
    s = _setup(config, run_dir, resume, progress, device, rank, world)
    monitor.begin(s.start_epoch, len(s.loader), s.budget_s)
    end_kind = "completed"
    stop.in_loop = True
    for epoch in range(s.start_epoch, config.epochs):
        result = _train_epoch(s, epoch, stop, monitor)
        if distributed.any_rank(result.diverged is not None, world, device):
            _record_diverged(s, epoch, result)
        partial = result.batches < len(s.loader)
        epochs_done = epoch if partial else epoch + 1
        if result.stop == "cancelled" or stop.reason:
            end_kind = "cancelled"
        elif epochs_done < config.epochs and (result.stop == "time budget" or time.perf_counter() - s.t_start >= s.budget_s):
            end_kind = "time_budget"  # mid-epoch, or between epochs with epochs still to go
        _finish_epoch(s, epoch, epochs_done, result, partial)
        monitor.end_epoch(epochs_done, s.step)
        if end_kind != "completed":
            break
    _record_end(s, end_kind, stop, monitor)


def _setup(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, device, rank: int, world: int) -> _Session:
    """Data (slice cache, patient split, datasets), model and optimisers (restored when resuming), config.json, loaders."""
    is_main = rank == 0
    seed_everything(config.seed)
    data_root, store, split, train_ds, val_ds = _load_data(config, progress, rank, world)
    last = run_dir / "last"
    if resume:  # the architecture the checkpoint records, even where a default has changed since the run began
        model = ckpt_weights.load(last, expect_model=config.model, preprocess=config.preprocess, device=device).model
    else:
        model = create_model(config.model, in_channels=len(config.modalities), image_size=config.image_size,
                             **config.model_options)
    model.to(device)
    optimizers = model.configure_optimizers(config.lr)
    if world > 1:
        distributed.broadcast_params(model)
        distributed.wrap_data_parallel(model, optimizers)

    start_epoch, step, best = 0, 0, math.inf
    if resume:
        state = ckpt_weights.load_training_state(last, optimizers)
        start_epoch, step, best = state["epoch"], state["step"], state["best_val_loss"]
        log.info("resumed from epoch %d", start_epoch)

    split_info = {"ratios": None if config.cases else list(config.split_ratios), "seed": config.seed, "cases": split}
    if is_main and not resume:
        fileio.write_json(run_dir / "config.json", {
            "model": config.model, "train": config.to_dict(), "hparams": model.hparams,
            "data_root": str(data_root), "preprocess": config.preprocess.to_dict(), "split": split_info,
            "store": str(store.root), "world_size": world, "device": str(device),
        })

    generator = torch.Generator().manual_seed(config.seed)
    sampler = DistributedSampler(train_ds, world, rank, shuffle=True, seed=config.seed) if world > 1 else None
    drop_last = len(train_ds) > config.batch_size * world
    if _data_on_device(config, train_ds, device):
        images = train_ds.images_on(device)
        loader = DeviceLoader(images, config.batch_size, shuffle=sampler is None, generator=generator, drop_last=drop_last,
                              sampler=sampler)
        log.info("training slices held on %s (%.0f MB)", device, images.numel() * images.element_size() / 2**20)
    else:
        loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                            generator=generator, num_workers=config.num_workers, drop_last=drop_last,
                            pin_memory=device.type == "cuda", persistent_workers=config.num_workers > 0)
    val_loader = DataLoader(val_ds, batch_size=max(config.batch_size, 64), shuffle=False, num_workers=0)
    amp, model.grad_scaler = _precision(device)
    info_base = {
        "preprocess": config.preprocess.to_dict(), "train": config.to_dict(), "split": split_info,
        "data": data_identity(data_root, store.manifest["cases"], demo=config.data is None),
    }
    s = _Session(config, run_dir, device, rank, world, progress, data_root, model, optimizers, train_ds, val_ds, loader,
                 sampler, val_loader, amp, info_base, _sample_slices(val_ds, train_ds, device) if is_main else None,
                 start_epoch=start_epoch, step=step, best=best,
                 budget_s=config.max_minutes * 60 if config.max_minutes else math.inf, t_start=time.perf_counter(),
                 progress_frac=start_epoch / config.epochs)
    log.info("training %s on %s: %d healthy train slices, %d val slices, device %s, world %d",
             config.model, data_root, len(train_ds), len(val_ds), device, world)
    if s.no_val:
        log.warning("no validation slices (split ratios %s): best/ follows the latest epoch", list(config.split_ratios))
    return s


DEVICE_DATA_SHARE = 0.5  # automatic data_on_device: the training slices may take at most this share of free CUDA memory


def _data_on_device(config: TrainConfig, train_ds: SliceDataset, device: torch.device) -> bool:
    """Whether the training slices are held on the device: as configured, or (None) on CUDA when they fit."""
    need = train_ds.image_nbytes
    if config.data_on_device is False or (config.data_on_device is None and device.type != "cuda"):
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > DEVICE_DATA_SHARE * free:
            if config.data_on_device:
                raise ConfigError(f"data on device: the {len(train_ds)} training slices take {need / 2**30:.1f} GB, more than "
                                  f"{DEVICE_DATA_SHARE:.0%} of the {free / 2**30:.1f} GB free on {device}; train without it")
            log.info("training slices (%.1f GB) do not fit on %s; read from the slice cache", need / 2**30, device)
            return False
    return True


def _precision(device: torch.device):
    """Mixed precision for a device: (autocast context, gradient scaler or None).

    CUDA: bfloat16 autocast where the GPU has it (Ampere and later; no scaler needed, same exponent range as
    float32), float16 autocast with a gradient scaler before that. CPU and MPS: float32 (no autocast).
    Losses, sigmoids and residuals are computed in float32 under autocast (``uad.models.blocks``).
    """
    if device.type != "cuda":
        return contextlib.nullcontext(), None
    if torch.cuda.is_bf16_supported(including_emulation=False):  # emulated bfloat16 (pre-Ampere) would be slow
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _load_data(config: TrainConfig, progress: bool, rank: int, world: int):
    """The slice cache (built by rank 0), the patient split and the healthy-slice datasets of train and val."""
    from uad.data.demo import resolve_data_root
    from uad.data.store import SliceStore, build_store, store_dir

    is_main = rank == 0
    data_root = resolve_data_root(config.data, progress=progress and is_main) if is_main else None
    if is_main:
        store = build_store(data_root, config.preprocess, progress=progress)
    distributed.barrier(world)
    if not is_main:
        data_root = resolve_data_root(config.data, progress=False)
        store = SliceStore(store_dir(data_root, config.preprocess))

    labelled = store.labelled_ids
    if config.cases is not None:
        split = {k: list(v) for k, v in config.cases.items()}
        missing = sorted(set(split["train"] + split["val"]) - set(labelled))
        if missing:
            raise ConfigError(f"{data_root}: listed training/validation cases are missing or unlabelled: {', '.join(missing)}")
    else:
        split = split_cases(labelled, config.split_ratios, config.seed)
    train_ds = SliceDataset(store, split["train"], healthy_only=True)
    val_ds = SliceDataset(store, split["val"], healthy_only=True)
    if len(train_ds) == 0:
        raise ConfigError(f"no healthy training slices in {data_root} (train cases: {len(split['train'])})")
    return data_root, store, split, train_ds, val_ds


SAMPLE_MIN_BRAIN = 0.6  # sample slices hold at least this fraction of the most brain any slice of their set holds


def _sample_rows(val_ds: SliceDataset, train_ds: SliceDataset) -> tuple[SliceDataset, list[int]]:
    """The dataset (validation, else training) and rows of the ``N_SAMPLES`` sample slices: slices with plenty
    of brain (``SAMPLE_MIN_BRAIN`` of the largest), spread evenly over the cases and positions among them, so
    the pictures show anatomy rather than the skull's top or the cerebellum's last slices."""
    ds = val_ds if len(val_ds) else train_ds
    table = getattr(ds, "table", None)
    rows = list(range(len(ds)))
    if table is not None and "brain_pixels" in getattr(table, "columns", ()) and len(table) == len(ds):
        brain = table["brain_pixels"].to_numpy(np.float64)
        rows = [int(i) for i in np.flatnonzero(brain >= SAMPLE_MIN_BRAIN * brain.max())] or rows
    picks = np.linspace(0, len(rows) - 1, min(N_SAMPLES, len(rows)))
    return ds, sorted({rows[int(round(i))] for i in picks})


def _sample_slices(val_ds: SliceDataset, train_ds: SliceDataset, device) -> torch.Tensor:
    """The ``N_SAMPLES`` fixed sample slices (``_sample_rows``) as one batch on ``device``."""
    ds, idx = _sample_rows(val_ds, train_ds)
    return torch.stack([torch.as_tensor(ds[i]) for i in idx]).to(device)


def _sample_names(val_ds: SliceDataset, train_ds: SliceDataset) -> list[dict[str, Any]]:
    """Which slices the samples show, left to right: {case_id, slice_index} (the axial index in the source file)."""
    ds, idx = _sample_rows(val_ds, train_ds)
    table = getattr(ds, "table", None)
    if table is None or not {"case_id", "slice_index"} <= set(getattr(table, "columns", ())):
        return []
    return [{"case_id": str(table.case_id.iloc[i]), "slice_index": int(table.slice_index.iloc[i])} for i in idx]


def _train_epoch(s: _Session, epoch: int, stop: _StopFlag, monitor: _Monitor) -> _EpochResult:
    """One pass over the training slices; stops early (between batches) on a cancel, the time budget or divergence."""
    from tqdm.auto import tqdm

    if s.sampler is not None:
        s.sampler.set_epoch(epoch)
    s.model.train()
    monitor.start_epoch(epoch)
    r = _EpochResult({}, {}, 0, 0, 0.0, None, None)
    t_epoch = time.perf_counter()
    bar = tqdm(s.loader, desc=f"epoch {epoch + 1}/{s.config.epochs}", disable=not (s.progress and s.is_main), leave=False)
    for i, x in enumerate(bar):
        # Progress is the larger of epochs done and time budget used, so multi-phase models
        # (f-AnoGAN) reach every phase under --max-minutes too. Ranks agree on both decisions.
        time_frac = min((time.perf_counter() - s.t_start) / s.budget_s, 1.0)
        stop_now = bool(stop.reason) or time_frac >= 1.0 or r.diverged is not None
        stop_now, time_frac = distributed.agree(stop_now, time_frac, s.world, s.device)
        if stop_now:
            if r.diverged is None:
                r.stop = "cancelled" if stop.reason else "time budget"
            break
        s.progress_frac = max((epoch + i / len(s.loader)) / s.config.epochs, time_frac)
        x = x.to(s.device, non_blocking=True)
        with s.amp:
            losses = s.model.training_step(x, s.optimizers, s.progress_frac)
        for k, v in losses.items():
            r.sums[k] = r.sums.get(k, 0.0) + float(v)
            r.counts[k] = r.counts.get(k, 0) + 1
            if r.diverged is None and not math.isfinite(float(v)):
                r.diverged = f"training loss '{k}' became {float(v)} at step {s.step + 1}, epoch {epoch + 1}"
        r.n_slices += x.shape[0] * s.world
        r.batches += 1
        s.step += 1
        monitor.after_batch(s.step, losses)
        if s.is_main:
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
    bar.close()
    r.seconds = time.perf_counter() - t_epoch
    # A finite loss can still leave non-finite weights (the update after it); either way nothing from
    # this epoch may be saved over the last good checkpoints.
    if r.diverged is None and not _finite(s.model):
        r.diverged = f"weights became non-finite in epoch {epoch + 1}"
    return r


def _record_diverged(s: _Session, epoch: int, r: _EpochResult) -> None:
    """Log the diverged epoch (partial, nothing saved) and fail the run."""
    if s.is_main:
        fileio.append_jsonl(s.run_dir / "metrics.jsonl", {
            "epoch": epoch + 1, "step": s.step, "train": r.means(), "val_loss": None, "seconds": r.seconds,
            "elapsed": time.perf_counter() - s.t_start, "partial": True, "diverged": True})
    raise TrainingDiverged(s.run_dir, r.diverged or "on another rank")


def _finish_epoch(s: _Session, epoch: int, epochs_done: int, r: _EpochResult, partial: bool) -> None:
    """Validate, log the epoch to metrics.jsonl, save last/ (and best/ when it improved), refresh samples and status."""
    distributed.sync_buffers(s.model, s.world)
    val_loss = _validate(s.model, s.val_loader, s.device, s.amp)
    record = {
        "epoch": epoch + 1, "step": s.step, "train": r.means(), "val_loss": val_loss,
        "slices_per_s": r.n_slices / max(r.seconds, 1e-9), "seconds": r.seconds,
        "elapsed": time.perf_counter() - s.t_start, "partial": partial,
        "lr": {name: float(opt.param_groups[0]["lr"]) for name, opt in s.optimizers.items()},
    }
    if s.device.type == "cuda":  # this epoch's peak (the first epoch's includes setting up)
        record["gpu_memory_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20
        torch.cuda.reset_peak_memory_stats(s.device)
    if partial:
        record["batches"] = [r.batches, len(s.loader)]
    selectable = s.model.checkpoint_selectable(s.progress_frac)
    improved = selectable and (s.no_val or (math.isfinite(val_loss) and val_loss < s.best))
    if improved and not s.no_val:
        s.best = val_loss
    if not s.is_main:
        return
    fileio.append_jsonl(s.run_dir / "metrics.jsonl", record)
    info = {**s.info_base, "epoch": epochs_done, "step": s.step, "val_loss": val_loss, "best_val_loss": s.best,
            "best_selection": s.best_selection}
    ckpt_weights.save(s.run_dir / "last", s.model, info, optimizers=s.optimizers,
                     training_state={"epoch": epochs_done, "step": s.step, "best_val_loss": s.best})
    if improved or not (s.run_dir / "best").exists():
        ckpt_weights.save(s.run_dir / "best", s.model, info)
    if s.sample_x is not None:
        try:
            _save_samples(s.model, s.sample_x, s.run_dir, epoch + 1, _sample_names(s.val_ds, s.train_ds))
        except Exception as exc:  # noqa: BLE001 - a picture for watchers must never stop training
            log.warning("could not save sample reconstructions: %s", exc)
    folders.write_status(s.run_dir, "running", epoch=epochs_done, step=s.step, val_loss=val_loss, best_val_loss=s.best,
                      best_selection=s.best_selection, batch=r.batches, batches=len(s.loader),
                      elapsed=time.perf_counter() - s.t_start)
    log.info("epoch %d: %s val %.5f (%.0f slices/s)", epoch + 1,
             " ".join(f"{k} {v:.5f}" for k, v in record["train"].items()), val_loss, record["slices_per_s"])


def _record_end(s: _Session, kind: str, stop: _StopFlag, monitor: _Monitor) -> None:
    """The end state in status.json: completed, stopped by the time budget (at epoch/batch) or cancelled."""
    checksums = distributed.rank_checksums(s.model, s.world)  # lets users (and the tests) see that ranks stayed in sync
    if not s.is_main:
        return
    if checksums:
        folders.write_status(s.run_dir, "running", rank_weight_checksums=checksums)
    epochs_done = monitor.epochs_done
    if kind == "cancelled":
        reason = f"received {stop.reason}"
        folders.write_status(s.run_dir, "cancelled", finished=time.time(), reason=reason, epoch=epochs_done,
                          end=monitor.end(kind, reason=reason), eta=None)
    else:
        # A run stopped by its time budget did what it was asked ("completed" for cross-validation and resume);
        # its end says where it stopped, so nobody reads it as having trained every epoch.
        folders.write_status(s.run_dir, "completed", finished=time.time(), reason="time budget" if kind == "time_budget" else "completed",
                          epoch=epochs_done, end=monitor.end(kind), eta=None)
    log.info("run %s: %s", kind.replace("_", " "), s.run_dir)


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

