"""Real-data benchmark: patient-level k-fold cross-validation on real glioma scans, every model beside both baselines.

    python benchmarks/real_bench.py                          # the README's "Results on real scans" table
    python benchmarks/real_bench.py --models autoencoder vae --epochs 10
    python benchmarks/real_bench.py --quick                  # CI: one fold, 1 epoch, 64 px; checks it runs

Data: ``../shared/data/real_dev`` beside the repository (25 real BraTS/BRATS patients with expert
segmentations; see its README for sources and terms) or ``--data DIR``. Skips with a message, exit 0,
when the folder is absent. Writes ``<out>/crossval.json`` (every metric, per fold and pooled) and prints
the table; ``--markdown`` prints it as the README's Markdown table.

Each method's scored fold is kept in ``<out>/folds`` (``uad.evaluation.crossval``): the same command run again
pools the kept folds and trains only what is missing, on this machine or another one. The README's long
cross-validations keep theirs under ``benchmarks/results/<name>/`` (their ``runs/`` are not committed): give that
folder as ``--out`` to reprint, extend (``--max-folds`` higher, or methods added) or finish them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "real_dev"



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--models", nargs="+", default=["autoencoder", "vae", "gan", "ganomaly", "vit"],
                   help="models to cross-validate: NAME, NAME:key=value,... (training options) and/or "
                        "NAME@key=value,... (scoring-only options such as residual=abs); the label is the text; "
                        "ensemble(A+B+...) combines methods A, B, ... listed before it, fold by fold")
    p.add_argument("--modalities", nargs="+", default=["flair"])
    p.add_argument("--cohort-modalities", nargs="+", default=[], metavar="MOD",
                   help="only the patients who have all of these sequences (to compare inputs on one cohort)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per fold for every model (default: per model)")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget per model and fold")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-folds", type=int, default=None,
                   help="train and score only the first N of the folds (the table then names how many patients were tested)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "real_bench")
    p.add_argument("--quick", action="store_true", help="one fold, 1 epoch, 64 px, 50 bootstrap draws: checks it runs")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--from-json", type=Path, default=None, help="only print the table of an earlier crossval.json")
    return p.parse_args(argv)


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def method_specs(args):
    from uad.evaluation.crossval import REAL_EPOCHS, MethodSpec
    from uad.models import canonical_name

    specs = []
    def options(text):
        return {k: _parse_value(v) for k, v in (kv.split("=", 1) for kv in text.split(",") if kv)}

    for item in args.models:
        if item.startswith("ensemble(") and item.endswith(")"):  # ensemble(a+b+...): members are methods listed before
            specs.append(MethodSpec(model="ensemble", label=item, options={"members": item[len("ensemble("):-1].split("+")}))
            continue
        head, _, scoring = item.partition("@")
        name, _, training = head.partition(":")
        model = canonical_name(name)
        epochs = args.epochs or (1 if args.quick else REAL_EPOCHS)
        specs.append(MethodSpec(model=model, label=item if (training or scoring) else model, options=options(training),
                                epochs=epochs, max_minutes=args.max_minutes, score_options=options(scoring)))
    return specs


def table(result: dict, markdown: bool) -> str:
    from uad.evaluation import columns

    methods = result["methods"]
    rows = [columns.summary_row(name if name not in ("intensity", "brain_area") else f"baseline: {name}", m)
            for name, m in methods.items()]
    # An ensemble is not trained: its members' epochs are theirs.
    epochs = {m["label"]: "members'" if m.get("model") == "ensemble" else str(m["epochs"]) for m in result["config"]["methods"]}
    if markdown:
        return columns.markdown_table(rows, {"epochs / fold": [epochs.get(n, "–") for n in methods]})
    return columns.format_table(rows)


def paired_table(result: dict, markdown: bool) -> str:
    """Paired differences (A − B, 95 % patient-level paired bootstrap interval); * where the interval excludes 0."""
    pairs = result.get("paired") or []
    if not pairs:
        return ""
    metrics = [d["label"] for d in pairs[0]["differences"]]
    head = ["A − B"] + metrics
    rows = []
    for p in pairs:
        b = "intensity" if p["b"] == "intensity" else p["b"] + " (best)"
        cells = [f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" + ("*" if d["excludes_zero"] else "")
                 for d in p["differences"]]
        rows.append([f"{p['a']} − {b}"] + cells)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    return "\n".join(out + ["* the 95 % paired interval excludes 0"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        print(table(result, args.markdown))
        print(paired_table(result, args.markdown))
        return 0
    if not args.data.is_dir():
        print(f"real_bench: skipped, no real data at {args.data} (see the README's 'Results on real scans')")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from uad.evaluation.crossval import CrossValConfig, cross_validate

    config = CrossValConfig(
        data=str(args.data), methods=method_specs(args), modalities=tuple(args.modalities), cohort_modalities=tuple(args.cohort_modalities),
        image_size=64 if args.quick else args.image_size, folds=args.folds, seed=args.seed, device=args.device,
        n_boot=50 if args.quick else args.bootstrap, max_folds=1 if args.quick else args.max_folds)
    t0 = time.perf_counter()
    result = cross_validate(config, args.out, progress=not args.quick)
    print(f"{result['n_cases']} patients, {len(result['folds'])} of {args.folds} folds, "
          f"{time.perf_counter() - t0:.0f} s -> {args.out / 'crossval.json'}")
    print(table(result, args.markdown))
    print(paired_table(result, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
