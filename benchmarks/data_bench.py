"""Data benchmark: slices/s from the slice cache vs. reading each slice from its NIfTI volume.

    python benchmarks/data_bench.py [--data DIR] [--cases N]

Prints a table: synth seconds per case, cache build seconds per case, slices/s served as training
batches from the cache (DataLoader, batch 32, shuffled), the same batches drawn from the training
slices held in one tensor on ``--device`` (``data_on_device``; the CPU's RAM by default), slices/s
re-reading the NIfTI volume for every slice (the original project's approach), the ratios, and peak memory.

The two training-batch paths are timed in alternation, ``--rounds`` times (cache, held, cache, held, ...), so
that each round's ratio compares the two at the same moment of a machine whose load comes and goes; the table
gives the median rate of each path and the median ratio with its range over the rounds.

``--gathers`` adds, to the same alternation, the CPU gathers the trainer does not use, to show why: torch's
``index_select`` on all its threads, and the slices held as float16 (half the bytes to read) converted to float32
per batch. ``--busy N`` keeps N other processes spinning on the CPU while the batch paths are timed: a machine
shared with other work.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from uad.data import PreprocessConfig, build_store, discover_cases  # noqa: E402
from uad.data.dataset import DeviceLoader, SliceDataset  # noqa: E402
from uad.data.synth import generate_cohort  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def nifti_per_slice(cases, n_slices: int, size: int) -> float:
    """The original approach: every slice loads its whole volume, then resizes one slice."""
    import cv2

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(n_slices):
        case = cases[rng.integers(len(cases))]
        vol = nib.load(str(case.modalities["flair"])).get_fdata()
        k = rng.integers(40, 120)
        s = vol[:, :, k].astype(np.float32)
        s = (s - s.min()) / (s.max() - s.min() + 1e-8)
        cv2.resize(s, (size, size))
    return n_slices / (time.perf_counter() - t0)


SERVED = 20_000  # slices each path serves per timing (whole epochs, repeated), so a small cohort times many batches


def served_per_s(loader) -> float:
    """Slices/s of one timing: whole epochs of ``loader`` until SERVED slices have been served."""
    n, t0 = 0, time.perf_counter()
    while n < SERVED:
        for x in loader:
            n += x.shape[0]
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


class ThreadedGather(DeviceLoader):
    """The held batches gathered by torch's ``index_select`` on all its threads (not the trainer's CPU path)."""

    def __iter__(self):
        batches = self.epoch_batches()
        return (self.images.index_select(0, torch.as_tensor(b, dtype=torch.int64)) for b in batches)


class HalfGather(DeviceLoader):
    """The slices held as float16, each batch gathered by numpy and converted to float32 (not the trainer's path)."""

    def __iter__(self):
        host = self.images.numpy()
        batches = self.epoch_batches()
        return (torch.from_numpy(host.take(np.asarray(b, dtype=np.int64), axis=0)).float() for b in batches)


def _spin() -> None:
    while True:
        pass


def batch_paths(store, device: str, rounds: int, gathers: bool, busy: int,
                batch_size: int = 32) -> tuple[dict[str, list[float]], float]:
    """({path: per-round slices/s}, seconds to put the training slices on ``device``). Paths: "cache", training
    batches as the trainer's loader serves them (memory-mapped cache, one worker); "held", the same batches drawn
    from the slices held on ``device``; with ``gathers``, the alternative CPU gathers. All are timed in alternation,
    so each round saw the same machine; ``busy`` processes spin beside them meanwhile."""
    ds = SliceDataset(store, store.case_ids, healthy_only=True)
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    t0 = time.perf_counter()
    images = ds.images_on(device)
    load = time.perf_counter() - t0
    paths = {"cache": DataLoader(ds, batch_size=batch_size, shuffle=True, generator=seeded()),
             "held": DeviceLoader(images, batch_size, shuffle=True, generator=seeded(), drop_last=False)}
    if gathers and images.device.type == "cpu":
        paths["torch index_select, all threads"] = ThreadedGather(images, batch_size, True, seeded(), False)
        paths["float16 held, converted per batch"] = HalfGather(images.half(), batch_size, True, seeded(), False)
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
    for proc in spinners:
        proc.start()
    try:
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, loader in paths.items():
                rates[name].append(served_per_s(loader))
    finally:
        for proc in spinners:
            proc.terminate()
            proc.join()
    return rates, load


def per_round(rates: list[float], cached: list[float]) -> str:
    """The median rate, and the median ratio to the cache path with its range over the rounds."""
    ratios = [r / c for r, c in zip(rates, cached)]
    return (f"{float(np.median(rates)):,.0f} slices/s, {float(np.median(ratios)):.1f}x the cache "
            f"(rounds {min(ratios):.1f}-{max(ratios):.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="existing dataset (default: synthesise one)")
    parser.add_argument("--cases", type=int, default=8, help="cases to synthesise when --data is not given")
    parser.add_argument("--nifti-slices", type=int, default=40, help="slices to time on the NIfTI path")
    parser.add_argument("--device", default="cpu", help="where the in-memory path holds the slices (cpu, cuda, mps)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timings of the two batch paths")
    parser.add_argument("--gathers", action="store_true", help="also time the CPU gathers the trainer does not use")
    parser.add_argument("--busy", type=int, default=0, help="processes kept spinning while the batches are timed")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="uad-bench-"))
    rows = []
    try:
        data = args.data
        if data is None:
            data = work / "cohort"
            t0 = time.perf_counter()
            generate_cohort(data, n_cases=args.cases, seed=0, progress=False)
            rows.append(("synth (2 workers)", f"{(time.perf_counter() - t0) / args.cases:.2f} s/case"))
        cases, _ = discover_cases(data)
        t0 = time.perf_counter()
        store = build_store(data, PreprocessConfig(), cache_root=work / "cache", progress=False)
        rows.append(("cache build (all cores)", f"{(time.perf_counter() - t0) / len(cases):.2f} s/case"))
        t0 = time.perf_counter()
        build_store(data, PreprocessConfig(), cache_root=work / "cache", progress=False)
        rows.append(("cache re-open (nothing changed)", f"{time.perf_counter() - t0:.2f} s"))
        rates, load = batch_paths(store, args.device, max(1, args.rounds), args.gathers, max(0, args.busy))
        cached_rates = rates.pop("cache")
        cached = float(np.median(cached_rates))
        direct = nifti_per_slice(cases, args.nifti_slices, 128)
        beside = f", {args.busy} busy process{'es' if args.busy > 1 else ''} beside" if args.busy else ""
        rows.append((f"training batches from cache (median of {len(cached_rates)}{beside})", f"{cached:,.0f} slices/s"))
        rows.append((f"training batches held on {args.device} (data_on_device)", per_round(rates.pop("held"), cached_rates)))
        for name, path_rates in rates.items():
            rows.append((f"  not used: {name}", per_round(path_rates, cached_rates)))
        rows.append((f"putting the training slices on {args.device}", f"{load:.2f} s"))
        rows.append(("one NIfTI read per slice", f"{direct:,.1f} slices/s"))
        rows.append(("cache vs NIfTI per slice", f"{cached / direct:,.0f}x"))
        rows.append(("peak memory (RSS)", f"{peak_rss_mb():,.0f} MB"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
