"""Command line: ``python -m uad <command> --help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uad.errors import UADError


def _add_data_args(p: argparse.ArgumentParser, modalities: bool = True) -> None:
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: the demo cohort, generated on first use)")
    if modalities:
        p.add_argument("--modalities", nargs="+", default=["flair"], metavar="MOD",
                       help="input channels, from flair t1 t1ce t2 (default: flair)")
        p.add_argument("--image-size", type=int, default=128, help="working size in pixels, 64-256 (default 128)")


def _preprocess_config(args):
    from uad.data import PreprocessConfig

    return PreprocessConfig(modalities=tuple(args.modalities), image_size=args.image_size)


# -- synth ------------------------------------------------------------------------------------------------
def cmd_synth(args) -> int:
    import time

    from uad.data.synth import generate_cohort

    t0 = time.perf_counter()
    cases = generate_cohort(args.out, n_cases=args.cases, seed=args.seed, workers=args.workers, progress=True)
    print(f"wrote {len(cases)} cases to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


# -- prepare ----------------------------------------------------------------------------------------------
def cmd_prepare(args) -> int:
    from uad.data.demo import resolve_data_root
    from uad.data.store import build_store

    root = resolve_data_root(args.data)
    store = build_store(root, _preprocess_config(args), workers=args.workers)
    s = store.summary()
    print(f"dataset      {root}")
    print(f"cache        {store.root}")
    print(f"cases        {s['cases']} ({s['labelled_cases']} labelled)")
    print(f"slices       {s['slices']}")
    print(f"tumour slices {s['tumour_slices']} ({s['tumour_slice_fraction']:.1%} of labelled slices)")
    print(f"skipped      {s['skipped']}")
    for sk in store.skipped:
        print(f"  {sk.case_id}: {sk.reason}")
    return 0


# -- info -------------------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    from uad.data.cases import MODALITIES, discover_cases
    from uad.data.demo import resolve_data_root

    root = resolve_data_root(args.data)
    cases, skipped = discover_cases(root)
    print(f"{root}: {len(cases)} cases, {len(skipped)} not usable")
    print(f"{'case':<32} " + " ".join(f"{m:<5}" for m in MODALITIES) + " seg")
    for c in cases:
        marks = " ".join(f"{'yes' if m in c.modalities else '-':<5}" for m in MODALITIES)
        print(f"{c.case_id:<32} {marks} {'yes' if c.labelled else '-'}")
    for s in skipped:
        print(f"skipped {s.case_id}: {s.reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m uad", description="Unsupervised anomaly detection in brain MRI.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic demo cohort in BraTS 2021 layout")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: data/demo)")
    p.add_argument("--cases", type=int, default=None, help="number of cases (default 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="preprocess a dataset into the slice cache and summarise it")
    _add_data_args(p)
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("info", help="list the cases of a dataset and what each holds")
    _add_data_args(p, modalities=False)
    p.set_defaults(func=cmd_info)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        from uad import paths
        from uad.data.synth import DEFAULT_CASES

        args.out = args.out or paths.demo_dir()
        args.cases = args.cases or DEFAULT_CASES
    try:
        return int(args.func(args) or 0)
    except UADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
