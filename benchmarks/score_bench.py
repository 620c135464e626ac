"""Scoring benchmark: seconds to score one whole 240×240×155 case and write its map as NIfTI.

    python benchmarks/score_bench.py [--run checkpoints/autoencoder] [--cases 3] [--data FOLDER]

Per case: load + validate the NIfTI files, preprocess, anomaly maps for every kept slice (batched),
post-processing, map back to the source grid, write ``.nii.gz``. Each case is scored twice, with the
default post-processing (eroded brain mask, 5×5 median per slice) and with the 5×5×5 median across
slices (``median_3d``); load + preprocess is done once and counted in both totals.
Uses the demo cohort (generated if missing) unless ``--data`` names a folder. The last column is the
process's CPU time for the case: on a shared machine, with ``--threads 1``, the figure that does not
depend on what else runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uad.checkpoints import weights as ckpt_weights  # noqa: E402
from uad.data.cases import discover_cases  # noqa: E402
from uad.data.demo import ensure_demo  # noqa: E402
from uad.data.preprocess import preprocess_case  # noqa: E402
from uad.scoring.maps import score_case  # noqa: E402
from uad.scoring.nifti import write_nifti  # noqa: E402
from uad.scoring.recipe import PostprocessConfig, ScoringRecipe  # noqa: E402
from uad.scoring.scorers import ModelScorer  # noqa: E402

RECIPES = {"5×5 median (default)": ScoringRecipe(), "5×5×5 median": ScoringRecipe(post=PostprocessConfig(median_3d=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path(__file__).resolve().parents[1] / "checkpoints" / "autoencoder")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--data", type=Path, help="a dataset folder (default: the demo cohort)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ckpt = ckpt_weights.load(args.run)
    scorer = ModelScorer(ckpt.model)
    cases = discover_cases(args.data or ensure_demo())[0][: args.cases]
    out = Path(tempfile.mkdtemp(prefix="uad-score-"))
    print("| case | slices | post-processing | load + preprocess (s) | maps + post-processing (s) | NIfTI write (s) | total (s) "
          "| total CPU (s) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for case in cases:
        t0, c0 = time.perf_counter(), time.process_time()
        pre = preprocess_case(case, ckpt.preprocess)
        load, load_cpu = time.perf_counter() - t0, time.process_time() - c0
        for name, recipe in RECIPES.items():
            t1, c1 = time.perf_counter(), time.process_time()
            vs = score_case(scorer, pre, recipe)
            t2 = time.perf_counter()
            write_nifti(vs.maps, pre.geometry, out / f"{case.case_id}_anomaly.nii.gz")
            t3, c3 = time.perf_counter(), time.process_time()
            print(f"| {case.case_id} | {len(pre.slice_index)} | {name} | {load:.2f} | {t2 - t1:.2f} | {t3 - t2:.2f} | "
                  f"{load + t3 - t1:.2f} | {load_cpu + c3 - c1:.2f} |", flush=True)


if __name__ == "__main__":
    main()
