"""Command line: ``python -m uad <command> --help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uad.core.errors import UADError
from uad.data import identity
from uad.evaluation import columns, summaries


def _add_data_args(p: argparse.ArgumentParser, modalities: bool = True) -> None:
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: the demo cohort, generated on first use)")
    if modalities:
        p.add_argument("--modalities", nargs="+", default=["flair"], metavar="MOD",
                       help="input channels, from flair t1 t1ce t2 (default: flair)")
        p.add_argument("--image-size", type=int, default=128, help="working size in pixels, 64-256 (default 128)")


def _check_device(name: str | None) -> None:
    """``--device``: cpu, cuda, cuda:N or mps, and present on this machine (else a one-line ConfigError)."""
    if name is None:
        return
    import torch

    from uad.core.errors import ConfigError

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine")


def _check_out(path: Path | None, flag: str, folder: bool) -> None:
    """An output path must not be a folder where a file is wanted (or the reverse), nor lie under a file."""
    if path is None:
        return
    from uad.core.errors import ConfigError

    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{path}: {flag} must be a folder, but this is an existing file")
        if not folder and path.is_dir():
            raise ConfigError(f"{path}: {flag} must be a file name, but this is an existing folder")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{path}: {flag} lies under {parent}, which is a file, not a folder")
            break


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
    store = build_store(root, _preprocess_config(args), workers=args.workers, verify=True)  # every byte of every case
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


# -- cache ------------------------------------------------------------------------------------------------
def cmd_cache(args) -> int:
    import math

    from uad.core import paths
    from uad.core.errors import ConfigError
    from uad.data import cache

    root = paths.cache_dir()
    if args.cache_command in (None, "list"):
        found = cache.entries(root)
        if not found:
            print(f"slice cache {root}: empty")
            return 0
        print(f"slice cache {root}: {len(found)} entries, {cache.format_size(sum(e.size for e in found))}")
        print(cache.format_table(found))
        return 0

    if args.older_than is None and args.max_size is None:
        raise ConfigError("cache prune needs --older-than DAYS and/or --max-size SIZE")
    if args.older_than is not None and not (math.isfinite(args.older_than) and args.older_than >= 0):
        raise ConfigError(f"--older-than must be a number of days >= 0, got {args.older_than}")
    max_bytes = None
    if args.max_size is not None:
        try:
            max_bytes = cache.parse_size(args.max_size)
        except ValueError as exc:
            raise ConfigError(f"--max-size: {exc}") from None
    pruned = cache.prune(root, older_than_days=args.older_than, max_bytes=max_bytes, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in pruned.removed:
        print(f"{verb} {e.name}  {cache.format_size(e.size)}, last used {cache.format_time(e.last_used)}, "
              f"{e.cases} cases, {e.config}, {e.dataset or '(incomplete build)'}")
    for e in pruned.in_use:
        print(f"kept {e.name}: in use by a running build or reader")
    freed = pruned.total_before - pruned.total_after
    print(f"{verb} {len(pruned.removed)} entries ({cache.format_size(freed)}); slice cache {root} "
          f"{'would take' if args.dry_run else 'takes'} {cache.format_size(pruned.total_after)}")
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


# -- train ----------------------------------------------------------------------------------------------


def _model_options() -> dict[str, tuple[type, object, list[str], tuple | None, tuple | None]]:
    """Every option of every registered model: name → (type, default, models that take it, choices or None,
    (low, high) bounds or None). Where models bound one option differently the flag shows the widest; each
    model's own bounds are checked when the configuration is (``TrainConfig``)."""
    from uad.models import list_models, model_options

    options: dict[str, tuple[type, object, list[str], tuple | None, tuple | None]] = {}
    for name in list_models():
        for opt, spec in model_options(name).items():
            bounds = (spec.low, spec.high) if spec.low is not None else None
            entry = options.setdefault(opt, (spec.type, spec.default, [], spec.choices, bounds))
            entry[2].append(name)
            if entry[3] != spec.choices:  # same name, other choices in another model: accept the union
                entry = options[opt] = (entry[0], entry[1], entry[2], tuple(dict.fromkeys((entry[3] or ()) + (spec.choices or ()))) or None, entry[4])
            if bounds and entry[4] and bounds != entry[4]:
                options[opt] = entry[:4] + ((min(bounds[0], entry[4][0]), max(bounds[1], entry[4][1])),)
    return options


def _number_type(typ: type):
    """argparse type for a numeric model option: a number, never NaN or infinity (they pass every bound check)."""
    import math

    def parse(text: str):
        value = typ(text)  # ValueError: argparse says "invalid int value"
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        return value

    parse.__name__ = typ.__name__  # argparse's "invalid float value" names it
    return parse


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from uad.models import list_models

    p.add_argument("--model", help=f"one of {', '.join(list_models())}")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="train the configuration in this JSON file (a TrainConfig, as the app writes it) instead of flags")
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 20; with --resume: the new total)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-minutes", type=float, default=None, help="time budget; the run stops and completes after it")
    p.add_argument("--split-ratios", default="0.7,0.1,0.2", help="train,val,test patient ratios (default 0.7,0.1,0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--data-on-device", type=_parse_bool, default=None, metavar="{true,false}",
                   help="hold the training slices on the training device and draw batches there "
                        "(default: on CUDA when they fit in half its free memory)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<timestamp>-<model>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR from its last checkpoint at the next epoch (--epochs may raise the total)")
    p.add_argument("--overwrite", action="store_true",
                   help="if --out already holds a run, move it aside to OUT.old-<time> and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = p.add_argument_group("model options (only for the models named)")
    for opt, (typ, default, models, choices, bounds) in sorted(_model_options().items()):
        bounded = f", {bounds[0]:g} to {bounds[1]:g}" if bounds else ""
        group.add_argument(f"--{opt.replace('_', '-')}", dest=f"model_opt_{opt}", default=None,
                           type=_parse_bool if typ is bool else _number_type(typ) if typ in (int, float) else typ,
                           choices=choices,
                           metavar="{" + ",".join(map(str, choices)) + "}" if choices else typ.__name__.upper(),
                           help=f"{', '.join(models)} (default {default}{bounded})")


def cmd_train(args) -> int:
    from uad.core.errors import ConfigError
    from uad.training.config import TrainConfig, check_config
    from uad.training.trainer import train

    # Checked here, before any work, so a bad value is one line rather than a traceback from deep inside.
    if not 0 <= args.seed < 2**63:  # torch.manual_seed overflows above that
        raise ConfigError(f"--seed must be >= 0 and < 2**63, got {args.seed}")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {args.num_workers}")
    import math

    for flag, value in (("--lr", args.lr), ("--max-minutes", args.max_minutes)):
        if value is not None and not math.isfinite(value):  # NaN passes every "> 0" check
            raise ConfigError(f"{flag} must be a finite number, got {value}")
    _check_device(args.device)
    _check_out(args.out, "--out", folder=True)

    given = {k[len("model_opt_"):]: v for k, v in vars(args).items() if k.startswith("model_opt_") and v is not None}
    if args.resume:
        from uad.runs import folders

        folders.refuse_shipped(args.resume, "resumed")  # before anything is read or written there
        config_path = Path(args.resume) / "config.json"
        saved = (folders.read_config(args.resume) or {}).get("train")
        if not isinstance(saved, dict):
            raise ConfigError(f"{config_path}: cannot resume, no readable run configuration")
        if args.epochs is not None:
            saved["epochs"] = args.epochs
        train(TrainConfig.from_dict(saved), run_dir=args.resume, resume=True, progress=not args.no_progress,
              overwrite=args.overwrite)
        return 0
    if args.config is not None:
        if args.model or given:
            raise ConfigError("--config FILE holds the whole configuration: give no --model or model options with it")
        config = TrainConfig.read(args.config)
        check_config(config)
        run_dir = train(config, run_dir=args.out, progress=not args.no_progress, overwrite=args.overwrite)
        print(f"run folder: {run_dir}")
        return 0
    if not args.model:
        raise ConfigError("--model is required (or --config FILE, or --resume RUN_DIR)")
    options = _model_options()
    from uad.models import canonical_name

    model = canonical_name(args.model)
    wrong = [k for k in given if model not in options[k][2]]
    if wrong:
        raise ConfigError(f"model {model} has no option {', '.join('--' + w.replace('_', '-') for w in wrong)}")
    config = TrainConfig(
        model=model, data=str(args.data) if args.data else None, modalities=tuple(args.modalities),
        image_size=args.image_size, epochs=20 if args.epochs is None else args.epochs, batch_size=args.batch_size, lr=args.lr,
        max_minutes=args.max_minutes, split_ratios=args.split_ratios, seed=args.seed, device=args.device,
        num_workers=args.num_workers, data_on_device=args.data_on_device, model_options=given,
    )
    check_config(config)  # the model's own checks too, before a run folder exists
    run_dir = train(config, run_dir=args.out, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"run folder: {run_dir}")
    return 0


# -- runs -----------------------------------------------------------------------------------------------
def _runs_table(views) -> str:
    rows = [("RUN", "MODEL", "STATE", "DONE", "NAME", "TAGS", "DETAIL")]
    for v in views:
        rows.append((v.info.name, v.info.model, v.label, f"{v.progress:.0%}", v.info.meta.get("name") or "",
                     ",".join(v.tags), v.outcome))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def cmd_runs(args) -> int:
    from uad.core import paths
    from uad.core.errors import ConfigError
    from uad.jobs import background, run_jobs
    from uad.runs import archive
    from uad.runs import meta as run_meta

    command = args.runs_command or "list"
    if command == "list":
        skipped, finished = [], []
        views = run_jobs.list_run_views(include_shipped=args.shipped, archived=args.archived, skipped=skipped,
                                        finished=finished)
        where = archive.archive_dir() if args.archived else paths.runs_dir()
        from uad.data.cache import format_size

        for folder, size in finished:
            print(f"finished deleting {folder} ({format_size(size)}), a delete interrupted earlier", file=sys.stderr)
        for s in skipped:
            print(f"warning: skipped {s.path}: {s.reason}", file=sys.stderr)
        if not views:
            print(f"no runs in {where}")
            return 0
        print(_runs_table(views))
        return 0

    v = run_jobs.find_run(args.run, archived=True if command == "restore" else None,
                          damaged_ok=command in ("archive", "delete"))  # a damaged run can still be cleared away
    words = {"cancel": "cancelled", "resume": "resumed", "rename": "renamed", "tag": "tagged", "note": "noted",
             "archive": "archived", "restore": "restored", "delete": "deleted"}
    run_jobs.require_own(v, words[command])
    if command == "cancel":
        print(run_jobs.cancel_run(v.path))
    elif command == "resume":
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
        run_jobs.resume_run(v.path, args.epochs)
        print(f"resuming {v.path} in the background; output in {v.path / background.STDOUT} (`uad train --resume` "
              "runs it in the foreground)")
    elif command == "rename":
        meta = run_meta.update_meta(v.path, name=args.name)
        print(f"{v.info.name}: named {meta['name']!r}" if meta["name"] else f"{v.info.name}: name cleared")
    elif command == "tag":
        if args.remove:
            meta = run_meta.update_meta(v.path, remove_tags=args.tags)
        else:
            meta = run_meta.update_meta(v.path, add_tags=args.tags)
        print(f"{v.info.name}: tags {', '.join(meta['tags']) or '(none)'}")
    elif command == "note":
        run_meta.update_meta(v.path, note=args.text)
        print(f"{v.info.name}: note {'saved' if args.text.strip() else 'cleared'}")
    elif command == "archive":
        print(f"archived {v.info.name} to {run_jobs.archive_run(v.path)}")
    elif command == "restore":
        print(f"restored {v.info.name} to {run_jobs.restore_run(v.path)}")
    elif command == "delete":
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigError(f"deleting {v.path} cannot be undone: pass --yes to confirm")
            answer = input(f"Delete {v.path} and everything in it for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not deleted")
                return 1
        run_jobs.delete_run(v.path)
        print(f"deleted {v.path}")
    return 0


# -- scoring and evaluation ---------------------------------------------------------------------------------
def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The scoring recipe's flags; each left out keeps the value of the recipe it starts from."""
    from uad.scoring.recipe import RESIDUALS, SLICE_SCORES, PostprocessConfig

    d = PostprocessConfig()
    g = p.add_argument_group("scoring recipe (residual, post-processing, slice score)")
    g.add_argument("--residual", choices=RESIDUALS, default=None, help="the map: |x - x^| or max(x - x^, 0) (default: the model's own)")
    g.add_argument("--residual-channels", nargs="+", default=None, metavar="MOD",
                   help="average the residual over these input sequences only, e.g. flair t2 (default: every input)")
    g.add_argument("--erode", type=int, default=None, help=f"brain-mask erosion in pixels (default {d.erode_brain})")
    g.add_argument("--median", type=int, default=None, help=f"median filter size, odd, 0 = none (default {d.median_size})")
    g.add_argument("--median-3d", action="store_const", const=True, default=None, help="median filter across neighbouring slices too")
    g.add_argument("--min-component", type=int, default=None,
                   help=f"after thresholding, drop 3-D components smaller than this many voxels (default {d.min_component})")
    g.add_argument("--slice-score", choices=SLICE_SCORES, default=None,
                   help=f"slice score: a percentile of the map inside the brain, or the model's own (default {d.slice_score})")
    g.add_argument("--score-percentile", type=float, default=None, help=f"(default {d.score_percentile:g})")


_RECIPE_FLAGS = {"erode": "erode_brain", "median": "median_size", "median_3d": "median_3d", "min_component": "min_component",
                 "slice_score": "slice_score", "score_percentile": "score_percentile"}


def _recipe(args, base=None):
    """The recipe the flags ask for: ``base`` (default: the default recipe) with every given flag applied."""
    from dataclasses import replace

    from uad.core.errors import ConfigError
    from uad.scoring.recipe import ScoringRecipe

    base = base or ScoringRecipe()
    try:
        post = replace(base.post, **{field: getattr(args, flag) for flag, field in _RECIPE_FLAGS.items()
                                     if getattr(args, flag) is not None})
        channels = tuple(args.residual_channels) if args.residual_channels else base.channels
        return ScoringRecipe(args.residual or base.residual, post, channels)
    except ConfigError as exc:  # the recipe's own bounds, said with the flag the user typed
        text = str(exc)
        for flag, field in _RECIPE_FLAGS.items():
            text = text.replace(f"{field} must", f"--{flag.replace('_', '-')} must", 1)
        raise ConfigError(text.replace("residual channels must", "--residual-channels must", 1)) from None


def _recipe_given(args) -> bool:
    return args.residual is not None or args.residual_channels is not None or any(getattr(args, f) is not None for f in _RECIPE_FLAGS)


MAX_BOOTSTRAP = 100_000


def cmd_evaluate(args) -> int:
    from uad.core.errors import ConfigError
    from uad.evaluation.evaluate import evaluate

    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise ConfigError(f"--bootstrap must be between 0 and {MAX_BOOTSTRAP} resamples, got {args.bootstrap}")
    recipe = _recipe(args)  # a bad flag is one line before anything is loaded
    _check_device(args.device)
    _check_out(args.out, "--out", folder=True)
    m = evaluate(args.run, data=args.data, split=args.split, out=args.out, save_maps=args.save_maps,
                 recipe=recipe, calibration=args.calibration, n_boot=args.bootstrap, device=args.device)
    s = summaries.EvaluationSummary.from_metrics(m)
    out = args.out or summaries.eval_folder(summaries.write_base(args.run), s.dataset, args.split)
    print(f"{m['model']} on {s.dataset.title}, {summaries.SPLIT_WORDS.get(args.split, args.split)} "
          f"({m['n_labelled_cases']} labelled cases, {m['n_slices']} slices) -> {out}")
    print(f"recipe: {s.recipe.describe()}; {m['calibration_words']}")
    if s.drift_warning:
        print(f"WARNING: {s.drift_warning}")
    print(columns.format_table(columns.comparison_rows([(m["model"], s)])))
    ops = columns.operating_rows(m)
    if ops:
        print("\nat the calibrated thresholds:")
        print(_text_table(list(ops[0]), [list(r.values()) for r in ops]))
    return 0


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [head, *rows])


def _dataset_filter(value: str | None) -> str | None:
    """``--dataset``: a dataset id as listed by ``uad compare`` errors, or a folder (turned into its id)."""
    if value is None:
        return None
    return identity.dataset_ref(value).id if Path(value).expanduser().exists() else value


def _pick_evaluations(run_paths: list[Path], dataset: str | None, split: str | None) -> list[tuple[Path, "summaries.EvaluationSummary"]]:
    """Each run's evaluation on one common (dataset, split): the one asked for, else the only one they share.
    ConfigError naming the runs and what they have otherwise."""
    from uad.core.errors import ConfigError

    found = {run: summaries.find_evaluations(summaries.eval_bases(run)) for run in run_paths}
    for run, evals in found.items():
        if not evals:
            raise ConfigError(f"{Path(run) / 'eval'}: no evaluation found; run `python -m uad evaluate --run {run}` first")
    wanted = _dataset_filter(dataset)
    keys = [{s.key for s in evals if (wanted is None or s.dataset.id == wanted) and (split is None or s.split == split)}
            for evals in found.values()]
    common = set.intersection(*keys)

    def listing() -> str:
        return "; ".join(f"{run}: " + ", ".join(f"{s.dataset.id} ({s.dataset.label}) {s.split}" for s in evals)
                         for run, evals in found.items())

    if not common:
        raise ConfigError(f"no dataset and split evaluated for every run{' as asked' if wanted or split else ''}: {listing()}")
    if len(common) > 1:
        raise ConfigError(f"the runs share several evaluations ({', '.join(f'{d} {sp}' for d, sp in sorted(common))}); "
                          f"choose one with --dataset ID and/or --split")
    (key,) = common
    return [(run, next(s for s in evals if s.key == key)) for run, evals in found.items()]


def _provenance(run, s: "summaries.EvaluationSummary") -> str:
    from uad.checkpoints import record as ckpt_record

    try:
        current = ckpt_record.CheckpointRecord.read(run).weights_sha256
    except UADError:
        current = None
    return s.provenance(current)


def cmd_report(args) -> int:
    from uad.evaluation import html_report

    _check_out(args.out, "--out", folder=False)
    ((_, summary),) = _pick_evaluations([args.run], args.dataset, args.split)
    path = html_report.write_report(summary, args.out, run=args.run, examples=not args.no_examples)
    print(f"wrote {path} ({summary.model} on {summary.where}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_score(args) -> int:
    """A case's anomaly map (and, where the run's thresholds are known, its predicted mask) on the case's own grid.

    The recipe is the one of the run's evaluation on the case's folder (else on its own training data), so a
    map matches the numbers an evaluation reported; flags change it. The mask uses the run's own calibrated
    threshold (its validation patients), the threshold a site without labels would deploy."""
    import time

    import numpy as np

    from uad.checkpoints import weights as ckpt_weights
    from uad.core.errors import ConfigError, DataError
    from uad.data.cases import discover_cases
    from uad.data.store import load_working_case
    from uad.evaluation.evaluate import run_calibration
    from uad.scoring import overlap
    from uad.scoring.maps import score_case
    from uad.scoring.nifti import write_mask, write_nifti
    from uad.scoring.recipe import CASE_RATE, rate_label
    from uad.scoring.scorers import ModelScorer

    _recipe(args)  # a bad flag is one line before anything is loaded
    _check_device(args.device)
    _check_out(args.out, "--out", folder=True)
    t0 = time.perf_counter()
    ckpt = ckpt_weights.load(args.run, device=args.device)
    cases, skipped = discover_cases(args.case)
    if len(cases) != 1:
        reason = f"; skipped: {skipped[0].reason}" if skipped else ""
        raise DataError(args.case, f"expected one case folder, found {len(cases)} cases{reason}")
    case = cases[0]
    evals = summaries.find_evaluations(summaries.eval_bases(args.run))
    source = (summaries.pick(evals, identity.dataset_ref(case.folder.parent).id)
              or summaries.home_evaluation(args.run, ckpt.record.trained_root))
    base = source.recipe if source is not None else None
    recipe = _recipe(args, base).for_model(ckpt.model.residual)
    where = "the flags given" if _recipe_given(args) else (f"the evaluation on {source.where}" if source else "the defaults")
    # The folder holding the case is the dataset root a slice cache (prepare, train, evaluate) is keyed by;
    # a case cached under another root is preprocessed now, which only costs time.
    pre = load_working_case(case.folder.parent, case, ckpt.preprocess)
    vs = score_case(ModelScorer.of(ckpt, device=args.device), pre, recipe)
    path = write_nifti(vs.maps, pre.geometry, Path(args.out) / f"{case.case_id}_anomaly.nii.gz")
    print(f"recipe ({where}): {recipe.describe()}")
    print(f"wrote {path}")
    try:
        calibration = run_calibration(args.run, ckpt, recipe, device=args.device)[ckpt.model.name]
    except ConfigError as exc:
        print(f"no mask: {exc}")
        calibration = None
    thr = calibration.threshold(CASE_RATE) if calibration is not None else None
    if calibration is not None:
        from uad.evaluation import drift, metrics

        brain = metrics.PixelAccumulator()
        brain.update_healthy(vs.maps, vs.mask)
        check = drift.check(calibration.healthy_quantiles, brain,
                            [{"rate": t.rate, "threshold": t.value} for t in calibration.thresholds])
        if check["warning"]:
            print(f"WARNING: {check['warning']}")
    if thr is not None:
        pred = vs.prediction(thr)
        mask_path = write_mask(pred, pre.geometry, Path(args.out) / f"{case.case_id}_mask.nii.gz")
        print(f"wrote {mask_path}: map >= {thr:.4f}, the run's threshold at {rate_label(CASE_RATE)} healthy FPR "
              f"(calibrated on {len(calibration.cases)} validation patients)")
        if pre.labelled:
            healthy = ~np.asarray(pre.label, bool)
            px = vs.maps[healthy][vs.mask[healthy]]
            reached = float(np.count_nonzero(px >= thr)) / px.size if px.size else float("nan")
            c = overlap.Counts.of(pred, np.asarray(pre.tumour, bool) & vs.mask)
            print(f"healthy FPR reached on this case's tumour-free slices: {reached:.2%} (nominal {rate_label(CASE_RATE)}); "
                  f"Dice {c.dice:.3f}, precision {c.precision:.3f}, recall {c.recall:.3f}")
    print(f"({time.perf_counter() - t0:.2f} s)")
    return 0


def cmd_ensemble(args) -> int:
    from uad.evaluation.ensembles import create_ensemble

    _check_device(args.device)
    _check_out(args.out, "--out", folder=True)
    out = create_ensemble(args.runs, args.out, rate=args.rate, recipe=_recipe(args), device=args.device)
    print(f"wrote the ensemble of {len(args.runs)} runs to {out}; evaluate it like any run: "
          f"python -m uad evaluate --run {out}")
    return 0


def cmd_compare(args) -> int:
    from uad.core import fileio

    if args.csv is not None:
        _check_out(args.csv, "--csv", folder=False)
    chosen = _pick_evaluations(list(args.runs), args.dataset, args.split)
    first = chosen[0][1]
    print(f"dataset {first.dataset.title}, {summaries.SPLIT_WORDS.get(first.split, first.split)}")
    rows = columns.comparison_rows([(Path(run).name or str(run), s) for run, s in chosen])
    print(columns.format_table(rows))
    for run, s in chosen:
        print(f"{Path(run).name or run}: {_provenance(run, s)}")
    from uad.evaluation import paired

    pairs, notes = paired.evaluation_pairs([(Path(run).name or str(run), s) for run, s in chosen])
    for a, b, diffs in pairs:
        print(f"\npaired differences, {a} (A) - {b} (B), 95 % patient-level paired bootstrap:")
        print(paired.format_differences(a, b, diffs))
    for note in notes:
        print(f"no paired differences for {note}")
    if args.csv is not None:  # only when asked: never a file the user did not name
        fileio.write_text(args.csv, columns.csv_text(rows))
        print(f"wrote {args.csv}")
    return 0


# -- app ---------------------------------------------------------------------------------------------------
def cmd_app(streamlit_args: list[str]) -> int:
    """``streamlit run app/Home.py`` from anywhere, on 127.0.0.1 unless ``--server.address`` is given."""
    import os
    import subprocess

    from uad.core import paths

    args = list(streamlit_args)
    explicit = any(a == "--server.address" or a.startswith("--server.address=") for a in args)
    if not explicit and not os.environ.get("STREAMLIT_SERVER_ADDRESS"):
        # Passed as a flag, not left to a config file: which config.toml Streamlit reads depends on the
        # working directory and the Streamlit version.
        args = ["--server.address", "127.0.0.1", *args]
    argv = [sys.executable, "-m", "streamlit", "run", str(paths.REPO_ROOT / "app" / "Home.py"), *args]
    if os.name == "posix":
        os.execv(sys.executable, argv)  # Ctrl-C and kill reach streamlit itself
    return subprocess.call(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m uad", description="Unsupervised anomaly detection in brain MRI.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic demo cohort in BraTS 2021 layout")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder: new, empty, or an earlier demo cohort (default: data/demo)")
    p.add_argument("--cases", type=int, default=None, help="number of cases (default 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="preprocess a dataset into the slice cache and summarise it")
    _add_data_args(p)
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("cache", help="list the slice cache's entries (default) or prune it",
                       description="The slice cache lives in $UAD_CACHE_DIR, else $UAD_HOME/data/cache, else "
                                   "data/cache/ in the repository. Entries in use by a running process are never removed.")
    p.set_defaults(func=cmd_cache, cache_command=None)
    csub = p.add_subparsers(dest="cache_command")
    csub.add_parser("list", help="each entry: dataset, config, cases, size on disk, last used")
    q = csub.add_parser("prune", help="remove old or least recently used entries")
    q.add_argument("--older-than", type=float, metavar="DAYS", help="remove entries not used for DAYS days")
    q.add_argument("--max-size", metavar="SIZE",
                   help="then remove least recently used entries until the cache takes at most SIZE (e.g. 500MB, 2GB)")
    q.add_argument("--dry-run", action="store_true", help="only print what would be removed")

    p = sub.add_parser("info", help="list the cases of a dataset and what each holds")
    _add_data_args(p, modalities=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model on the healthy slices of the training patients")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    text = ("list training runs (default) and manage them: cancel, resume in the background, name, tag, note, "
            "archive, restore, delete")
    p = sub.add_parser("runs", help=text, description=text + ". RUN is a run folder, its folder name under runs/, "
                       "or the name given with `runs rename`.")
    p.set_defaults(func=cmd_runs, runs_command=None, shipped=False, archived=False)
    rsub = p.add_subparsers(dest="runs_command")
    q = rsub.add_parser("list", help="each run: state (where it is or where it stopped), progress, name, tags")
    q.add_argument("--archived", action="store_true", help="list the archived runs instead")
    q.add_argument("--shipped", action="store_true", help="include the shipped checkpoints")
    rsub.add_parser("cancel", help="stop a running run (it saves a checkpoint and records 'cancelled')").add_argument("run")
    q = rsub.add_parser("resume", help="continue a stopped run from its last checkpoint, in the background")
    q.add_argument("run")
    q.add_argument("--epochs", type=int, default=None, help="new total number of epochs")
    q = rsub.add_parser("rename", help="give a run a name (the folder keeps its own; '' clears it)")
    q.add_argument("run")
    q.add_argument("name")
    q = rsub.add_parser("tag", help="add tags to a run (or --remove them)")
    q.add_argument("run")
    q.add_argument("tags", nargs="+", metavar="TAG")
    q.add_argument("--remove", action="store_true")
    q = rsub.add_parser("note", help="set a run's note ('' clears it)")
    q.add_argument("run")
    q.add_argument("text")
    rsub.add_parser("archive", help="move a finished run to runs/.archive/ (listed with --archived)").add_argument("run")
    rsub.add_parser("restore", help="move an archived run back to runs/").add_argument("run")
    q = rsub.add_parser("delete", help="delete a finished run for good (asks first, unless --yes)")
    q.add_argument("run")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    from uad.evaluation.evaluate import SPLIT_CHOICES

    p = sub.add_parser("evaluate", help="slice and pixel metrics of a run (and both baselines) on a split")
    p.add_argument("--run", type=Path, required=True, help="run or checkpoint folder")
    p.add_argument("--data", type=Path, default=None, help="dataset (default: the one the run was trained on)")
    p.add_argument("--split", choices=SPLIT_CHOICES, default="test")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/eval/<dataset-id>/<split>)")
    p.add_argument("--save-maps", action="store_true", help="also write maps/<case>_anomaly.nii.gz per case")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient-level bootstrap resamples (default 1000)")
    p.add_argument("--calibration", choices=("run", "folder"), default="run",
                   help="on another folder than the run's training data: 'run' applies the run's own thresholds "
                        "(calibrated on its validation patients; default), 'folder' calibrates on this folder's own "
                        "healthy slices of a few patients, who are then not scored")
    p.add_argument("--device", default=None)
    _add_recipe_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="write a case's anomaly map (and its mask at the run's threshold) as NIfTI on the case's own grid")
    p.add_argument("--run", type=Path, required=True, help="run or checkpoint folder")
    p.add_argument("--case", type=Path, required=True, help="case folder (labelled or not)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default=None)
    _add_recipe_args(p)
    p.set_defaults(func=cmd_score)

    text = ("start the web app on http://127.0.0.1, from any folder (further arguments go to streamlit run, "
            "e.g. --server.port 8502; --server.address 0.0.0.0 serves it on the network, deliberately)")
    p = sub.add_parser("app", help=text, description=text)
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    p = sub.add_parser("ensemble", help="combine trained runs into one method: each map divided by its own healthy "
                                        "calibration, then averaged (a run folder like any other)")
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="two or more run folders trained on the same data and split")
    p.add_argument("--out", type=Path, required=True, help="the ensemble's run folder (new), e.g. runs/ensemble-ae-vit")
    p.add_argument("--rate", type=float, default=0.01,
                   help="each map is divided by its threshold at this healthy FPR on its validation patients (default 0.01)")
    p.add_argument("--device", default=None)
    _add_recipe_args(p)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("compare", help="side-by-side table of evaluated runs and the baselines, with paired differences")
    p.add_argument("runs", nargs="+", type=Path, help="run or checkpoint folders (evaluated)")
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV to this file")
    p.add_argument("--dataset", default=None, help="dataset id or folder (default: the one every run was evaluated on)")
    p.add_argument("--split", choices=SPLIT_CHOICES, default=None, help="split (default: the one every run was evaluated on)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="a self-contained HTML report of a run's evaluation (works offline)")
    p.add_argument("--run", type=Path, required=True, help="run or checkpoint folder (evaluated)")
    p.add_argument("--dataset", default=None, help="dataset id or folder (default: the run's only evaluated dataset)")
    p.add_argument("--split", choices=SPLIT_CHOICES, default=None)
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (default report.html)")
    p.add_argument("--no-examples", action="store_true", help="leave out the example slices (no model scoring)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"] and not {"-h", "--help"} & set(argv[1:]):
        return cmd_app(argv[1:])  # its arguments are Streamlit's, which argparse would reject
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        from uad.core import paths
        from uad.data.synth import DEFAULT_CASES

        args.out = args.out or paths.demo_dir()
        args.cases = args.cases or DEFAULT_CASES
    try:
        return int(args.func(args) or 0)
    except UADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        import errno

        from uad.core import fileio

        named = fileio.write_error(exc, exc.filename or "a file")
        if named is None and exc.errno == errno.ENAMETOOLONG:
            named = UADError(f"{exc.filename or 'a path'}: file name too long")
        if named is None:
            raise
        # Anywhere a write was not already turned into a UADError naming the file: still one clear line.
        print(f"error: {named}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
