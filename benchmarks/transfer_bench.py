"""What a new site gets: a checkpoint applied to a folder it was not trained on, with the thresholds it brings.

    python benchmarks/transfer_bench.py                      # the README's transfer table
    python benchmarks/transfer_bench.py --models autoencoder vit
    python benchmarks/transfer_bench.py --models autoencoder vit ganomaly vae gan --reprint   # reuse runs/transfer_bench

For each model, the shipped checkpoint trained on the synthetic demo cohort is evaluated on the 25 real_dev
patients, and the one trained on real_dev is evaluated on the demo cohort (``uad evaluate --split all``), twice:
with the run's own thresholds (calibrated on its validation patients in its training data: what a site without
labels gets, the default) and with thresholds calibrated on the new folder's own healthy slices (those patients
then left out). One row per checkpoint, folder and choice: per calibrated rate the nominal healthy false-positive
rate, the one reached on the new folder's tumour-free slices, and Dice there; the pixel AP of the scored patients;
the label-free drift check's ratio and verdict.

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


def row_for(label: str, run: Path, data: Path, out: Path, calibration: str, n_boot: int, reprint: bool) -> list[str]:
    """One row: the evaluation of ``run`` on ``data`` with the ``calibration`` choice. With ``reprint`` the evaluation
    already in ``out`` is read back (checked as every reader checks it) when it scored the run's current weights with
    the same choice; otherwise, or when it is damaged, it is evaluated again."""
    from uad.checkpoints.record import CheckpointRecord
    from uad.evaluation.evaluate import evaluate
    from uad.evaluation.summaries import EvaluationSummary

    m = None
    if reprint and (out / "metrics.json").is_file():
        try:
            kept = EvaluationSummary.read(out)
            if (kept.staleness(CheckpointRecord.read(run).weights_sha256) is None
                    and kept.calibration.source == calibration):
                m = kept.raw
        except ValueError as exc:
            print(f"transfer_bench: {exc}; evaluating again", file=sys.stderr)
    if m is None:
        m = evaluate(run, data=data, split="all", out=out, calibration=calibration, n_boot=n_boot, progress=False)
    drift = m.get("drift") or {}
    verdict = "warns" if drift.get("warning") else "quiet"
    ratio = f"×{drift['q90_ratio']:.2f} ({verdict})" if calibration == "run" and drift.get("q90_ratio") else "–"
    thresholds = m["healthy_fpr_thresholds"]

    def each(key: str, fmt: str) -> str:
        return " / ".join("–" if t.get(key) is None or t[key] != t[key] else format(t[key], fmt) for t in thresholds)

    return [label, "run's own" if calibration == "run" else "new folder's own",
            " / ".join(f"{t['rate']:.0%}" for t in thresholds), each("reached_fpr", ".1%"), each("dice", ".3f"),
            f"{m['pixel_ap']:.3f}", ratio]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["autoencoder"])
    p.add_argument("--bootstrap", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "transfer_bench")
    p.add_argument("--reprint", action="store_true", help="reuse the evaluations under --out that scored the same weights with the same choice")
    args = p.parse_args(argv)
    if not REAL.is_dir():
        print(f"transfer_bench: skipped, no real data at {REAL}")
        return 0
    from uad.data.demo import ensure_demo

    demo = ensure_demo(progress=False)
    head = ["checkpoint → folder", "thresholds", "healthy FPR, nominal", "reached", "Dice at those thresholds",
            "pixel AP", "drift: 90th pct ratio"]
    rows = []
    for model in args.models:
        pairs = [(f"{model} (demo) → real_dev", REPO / "checkpoints" / model, REAL),
                 (f"{model} (real_dev) → demo", REPO / "checkpoints" / "real" / model, demo)]
        for label, run, data in pairs:
            for calibration in ("run", "folder"):
                rows.append(row_for(label, run, data, args.out / f"{run.parent.name}-{model}-{data.name}-{calibration}",
                                    calibration, args.bootstrap, args.reprint))
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
