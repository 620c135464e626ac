"""Cohort-scale benchmark: discovery, slice cache, data loading and evaluation on a BraTS-sized cohort.

    python benchmarks/scale_bench.py                      # 1,251 cases (BraTS 2021's size), 250 evaluated
    python benchmarks/scale_bench.py --cases 100 --test-cases 40

The cohort is built by hard-linking the demo cohort's and real_dev's case files under new case ids
(no bytes copied), in ``--work`` (default: a temporary folder, removed afterwards), with its own slice
cache there. Each phase runs in a fresh process so its peak memory is its own. Goals on the 2-core
development machine: discovery of 1,251 cases <= 5 s, re-opening an unchanged cache <= 5 s, evaluation
peak memory <= 4 GB whatever the number of cases, and no memory that grows with the number of cases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL_DEV = REPO.parent / "shared" / "data" / "real_dev"


def build_cohort(root: Path, n: int) -> int:
    """Hard-link ``n`` cases from the demo cohort and real_dev (when present) under new ids; returns sources used."""
    from uad.data.cases import discover_cases
    from uad.data.demo import ensure_demo

    sources = discover_cases(ensure_demo(progress=False))[0]
    if REAL_DEV.is_dir():
        sources += discover_cases(REAL_DEV)[0]
    for i in range(n):
        src = sources[i % len(sources)]
        new_id = f"BraTS2021_S{i:05d}"
        folder = root / new_id
        folder.mkdir(parents=True)
        for path in src.folder.iterdir():
            if path.is_file() and path.name.startswith(src.case_id):
                os.link(path, folder / path.name.replace(src.case_id, new_id, 1))
    return len(sources)


# Each phase is a small script run in its own interpreter; it prints one JSON line with its measures.
PHASES = {
    "discover": """
import time, json, resource
from uad.data.cases import discover_cases
t = time.perf_counter(); cases, skipped = discover_cases(ROOT)
print(json.dumps({"seconds": time.perf_counter() - t, "cases": len(cases), "skipped": len(skipped),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""",
    "prepare": """
import time, json, resource
from uad.data import PreprocessConfig, build_store
t = time.perf_counter(); store = build_store(ROOT, PreprocessConfig(), cache_root=CACHE, progress=False)
secs = time.perf_counter() - t
print(json.dumps({"seconds": secs, "cases": len(store.case_ids), "slices": len(store.table),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""",
    "loader": """
import time, json, resource, torch
from torch.utils.data import DataLoader
from uad.data import PreprocessConfig, build_store
from uad.data.dataset import SliceDataset
store = build_store(ROOT, PreprocessConfig(), cache_root=CACHE, progress=False)
ds = SliceDataset(store, store.labelled_ids, healthy_only=True)
loader = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
n, t = 0, time.perf_counter()
for x in loader:
    n += x.shape[0]
    if n >= 20000:
        break
print(json.dumps({"slices_per_s": n / (time.perf_counter() - t), "healthy_slices": len(ds),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""",
    "reopen": """
import time, json, resource
from uad.data import PreprocessConfig, build_store
t = time.perf_counter(); store = build_store(ROOT, PreprocessConfig(), cache_root=CACHE, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "cases": len(store.case_ids),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""",
    "evaluate": """
import time, json, resource
from uad.checkpoints import weights
from uad.data import PreprocessConfig, build_store
from uad.evaluation.cohort import score_cohort, summarise
from uad.scoring.recipe import ScoringRecipe
from uad.scoring.scorers import BASELINES, ModelScorer, baseline
ckpt = weights.load(CHECKPOINT)
store = build_store(ROOT, ckpt.preprocess, cache_root=CACHE, progress=False)
ids = store.labelled_ids
calib, test = ids[:10], ids[10:10 + N_TEST]
t = time.perf_counter()
scorers = [ModelScorer(ckpt.model)] + [baseline(b) for b in BASELINES]
tallies, rows = score_cohort(store, scorers, test, calib, ScoringRecipe())
results = {name: summarise(tally, n_boot=200, seed=0)[0] for name, tally in tallies.items()}
print(json.dumps({"seconds": time.perf_counter() - t, "cases": len(test), "slices": len(rows),
                  "pixel_ap": results[ckpt.model.name]["pixel_ap"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""",
}


def run_phase(name: str, root: Path, cache: Path, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "UAD_HOME": str(cache.parent)}
    header = f"ROOT = {str(root)!r}\nCACHE = {str(cache)!r}\n" + "".join(f"{k} = {v!r}\n" for k, v in extra.items())
    proc = subprocess.run([sys.executable, "-c", header + PHASES[name]], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1251)
    p.add_argument("--test-cases", type=int, default=250)
    p.add_argument("--small-test-cases", type=int, default=50, help="a second evaluation, to see memory not grow")
    p.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "autoencoder")
    p.add_argument("--work", type=Path, default=None, help="folder for the cohort and its cache (default: temporary)")
    args = p.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="uad-scale-"))
    root, cache = work / "cohort", work / "home" / "cache"
    try:
        t = time.perf_counter()
        n_sources = build_cohort(root, args.cases)
        link_s = time.perf_counter() - t
        disc = run_phase("discover", root, cache)
        prep = run_phase("prepare", root, cache)
        cache_bytes = du_bytes(cache)
        reopen = run_phase("reopen", root, cache)
        loader = run_phase("loader", root, cache)
        small = run_phase("evaluate", root, cache, CHECKPOINT=str(args.checkpoint), N_TEST=args.small_test_cases)
        big = run_phase("evaluate", root, cache, CHECKPOINT=str(args.checkpoint), N_TEST=args.test_cases)
        rows = [
            ("cohort", f"{args.cases:,} cases hard-linked from {n_sources} sources in {link_s:.1f} s"),
            ("discovery", f"{disc['seconds']:.2f} s ({disc['cases']:,} cases, goal <= 5 s)"),
            ("prepare, total", f"{prep['seconds'] / 60:.1f} min ({prep['slices']:,} slices)"),
            ("prepare, per case", f"{prep['seconds'] / max(prep['cases'], 1):.2f} s"),
            ("prepare, peak memory", f"{prep['peak_mb']:.0f} MB main, {prep['worker_peak_mb']:.0f} MB per worker"),
            ("cache bytes per case", f"{cache_bytes / max(prep['cases'], 1) / 1e6:.1f} MB ({cache_bytes / 1e9:.1f} GB in all)"),
            ("re-open unchanged cache", f"{reopen['seconds']:.2f} s (goal <= 5 s), peak {reopen['peak_mb']:.0f} MB"),
            ("training batches", f"{loader['slices_per_s']:,.0f} slices/s over {loader['healthy_slices']:,} healthy slices, peak {loader['peak_mb']:.0f} MB"),
            (f"evaluate {small['cases']} cases", f"{small['seconds']:.0f} s, peak {small['peak_mb']:.0f} MB"),
            (f"evaluate {big['cases']} cases", f"{big['seconds']:.0f} s, peak {big['peak_mb']:.0f} MB (goal <= 4,096 MB)"),
        ]
        print("| measure | value |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
