"""Data benchmark: slices/s from the slice cache vs. reading each slice from its NIfTI volume.

    python benchmarks/data_bench.py [--data DIR] [--cases N]

Prints a table: synth seconds per case, cache build seconds per case, slices/s served as training
batches from the cache (DataLoader, batch 32, shuffled), the same batches drawn from the training
slices held in one tensor on ``--device`` (``data_on_device``; the CPU's RAM by default), slices/s
re-reading the NIfTI volume for every slice (the original project's approach), the ratios, and peak memory.

The two training-batch paths are timed in alternation, ``--rounds`` times (cache, held, cache, held, ...), so
that each round's ratio compares the two at the same moment of a machine whose load comes and goes; the table
gives the median rate of each path and the median ratio with its range over the rounds.
"""

from __future__ import annotations

import argparse
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


def batch_paths(store, device: str, rounds: int, batch_size: int = 32) -> tuple[list[float], list[float], float]:
    """(per-round slices/s of training batches from the cache as the trainer's loader serves them (memory-mapped,
    one worker), per-round slices/s of the same batches drawn from the slices held on ``device``, seconds to put
    them there). The two are timed in alternation, so each round's pair saw the same machine."""
    ds = SliceDataset(store, store.case_ids, healthy_only=True)
    cache = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    images = ds.images_on(device)
    load = time.perf_counter() - t0
    held = DeviceLoader(images, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=False)
    cached_rates, held_rates = [], []
    for _ in range(rounds):
        cached_rates.append(served_per_s(cache))
        held_rates.append(served_per_s(held))
    return cached_rates, held_rates, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="existing dataset (default: synthesise one)")
    parser.add_argument("--cases", type=int, default=8, help="cases to synthesise when --data is not given")
    parser.add_argument("--nifti-slices", type=int, default=40, help="slices to time on the NIfTI path")
    parser.add_argument("--device", default="cpu", help="where the in-memory path holds the slices (cpu, cuda, mps)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timings of the two batch paths")
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
        cached_rates, held_rates, load = batch_paths(store, args.device, max(1, args.rounds))
        cached = float(np.median(cached_rates))
        ratios = [h / c for h, c in zip(held_rates, cached_rates)]
        direct = nifti_per_slice(cases, args.nifti_slices, 128)
        rows.append((f"training batches from cache (median of {len(ratios)})", f"{cached:,.0f} slices/s"))
        rows.append((f"training batches held on {args.device} (data_on_device)",
                     f"{float(np.median(held_rates)):,.0f} slices/s"))
        rows.append(("held on device vs from cache, per round",
                     f"{float(np.median(ratios)):.1f}x (rounds {min(ratios):.1f}-{max(ratios):.1f}x)"))
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
