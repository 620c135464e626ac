"""What a new site gets: a checkpoint applied to a folder it was not trained on, with the thresholds it brings.

    python benchmarks/transfer_bench.py                      # the README's transfer table
    python benchmarks/transfer_bench.py --models autoencoder vit

For each model, the shipped checkpoint trained on the synthetic demo cohort is evaluated on the 25 real_dev
patients, and the one trained on real_dev is evaluated on the demo cohort (``uad evaluate --split all``), twice:
with the run's own thresholds (calibrated on its validation patients in its training data: what a site without
labels gets, the default) and with thresholds calibrated on the new folder's own healthy slices (those patients
then left out). The table gives, per calibrated rate, the nominal healthy false-positive rate, the one reached on
the new folder's tumour-free slices, and Dice there, plus the label-free drift check's verdict.

Data: ``../shared/data/real_dev`` beside the repository (skipped when absent) and the demo cohort (generated
when missing). Writes evaluations under ``runs/transfer_bench/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL = REPO.parent / "shared" / "data" / "real_dev"


def rows_for(label: str, run: Path, data: Path, out: Path, calibration: str, n_boot: int) -> list[list[str]]:
    from uad.evaluation.evaluate import evaluate
    from uad.scoring.recipe import rate_label

    m = evaluate(run, data=data, split="all", out=out, calibration=calibration, n_boot=n_boot, progress=False)
    drift = m.get("drift") or {}
    verdict = "warns" if drift.get("warning") else "quiet"
    ratios = f"×{drift['q75_ratio']:.2f} / ×{drift['q90_ratio']:.2f}" if drift.get("q75_ratio") else "–"
    out_rows = []
    for t in m["healthy_fpr_thresholds"]:
        reached = t.get("reached_fpr")
        out_rows.append([label, "run's own" if calibration == "run" else "new folder's own", rate_label(t["rate"]),
                         f"{reached:.1%}" if reached is not None else "–",
                         f"{t['dice']:.3f}" if t.get("dice") == t.get("dice") and t.get("dice") is not None else "–",
                         f"{m['pixel_ap']:.3f}", f"{ratios} ({verdict})" if calibration == "run" else "–"])
    return out_rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["autoencoder"])
    p.add_argument("--bootstrap", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "transfer_bench")
    args = p.parse_args(argv)
    if not REAL.is_dir():
        print(f"transfer_bench: skipped, no real data at {REAL}")
        return 0
    from uad.data.demo import ensure_demo

    demo = ensure_demo(progress=False)
    head = ["checkpoint → folder", "thresholds", "healthy FPR (nominal)", "reached", "Dice", "pixel AP",
            "drift: 75th / 90th pct ratio"]
    rows = []
    for model in args.models:
        pairs = [(f"{model} (demo) → real_dev", REPO / "checkpoints" / model, REAL),
                 (f"{model} (real_dev) → demo", REPO / "checkpoints" / "real" / model, demo)]
        for label, run, data in pairs:
            for calibration in ("run", "folder"):
                rows += rows_for(label, run, data, args.out / f"{run.parent.name}-{model}-{data.name}-{calibration}",
                                 calibration, args.bootstrap)
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
