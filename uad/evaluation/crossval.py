"""Patient-level k-fold cross-validation of models and both baselines on one labelled cohort.

Each patient is tested exactly once. Per fold, a model trains on the healthy slices of the fold's
training patients (``TrainConfig.cases``), its checkpoint is chosen and its label-free thresholds are
calibrated on the healthy slices of a few validation patients outside the test fold, and every brain
slice of the test patients is scored. The folds' predictions are then pooled (slice scores, pixel
histograms, threshold confusion counts) into one summary per method with patient-level bootstrap
intervals, computed by the same code as ``uad evaluate``.

Training runs live in ``<out>/runs/<method>-fold<k>``; a fold whose run completed with the same
configuration is reused, so an interrupted cross-validation resumes where it stopped. Each method's scored
fold is kept too, in ``<out>/folds/fold<k>/`` (its tally: everything the pooled row and the paired bootstrap
need, with what produced it). A kept fold whose settings match is pooled again without its run, so a
cross-validation whose ``folds`` folder was kept (e.g. committed beside a README table) resumes on a machine
that never had its runs, and a method added later is compared with the earlier ones on the same patients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from uad import __version__
from uad.checkpoints import weights as ckpt_weights
from uad.core import fileio
from uad.core.errors import ConfigError, UADError
from uad.data.cases import discover_cases
from uad.data.preprocess import PreprocessConfig
from uad.data.splits import kfold_cases
from uad.data.store import build_store
from uad.evaluation import tally_io
from uad.evaluation.cohort import Tally, merge_tallies, score_cohort, summarise
from uad.evaluation.paired import CaseArrays, paired_differences
from uad.models import canonical_name, model_options, recorded_hparams, resolved_options
from uad.runs import folders
from uad.scoring.recipe import PostprocessConfig, ScoringRecipe
from uad.scoring.scorers import BASELINES, ModelScorer, baseline

log = logging.getLogger("uad.crossval")

# Epochs per fold of the README's real-data results, the same rule for every model (what the 2-core CPU allowed for
# five models at 128 px; see there). scripts/train_shipped.py --real trains the shipped real-data checkpoints as long.
REAL_EPOCHS = 30


@dataclass
class MethodSpec:
    """One model to cross-validate: registry name, a label for the tables, options and training length.

    ``score_options`` change only the scoring recipe (``residual`` and post-processing, e.g. ``median_3d=true``),
    so several methods can share one set of trained fold models: runs are named by model and training options.
    """

    model: str
    label: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    max_minutes: float | None = None  # per fold
    score_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = canonical_name(self.model)
        self.label = self.label or self.model
        if self.model == "ensemble":
            self.label = self.label if self.label != "ensemble" else f"ensemble({'+'.join(self.options.get('members') or [])})"

    def recipe(self, base: ScoringRecipe) -> ScoringRecipe:
        """``base`` with ``score_options`` applied (``residual`` and post-processing fields; anything else is refused).

        The residual is a scoring choice that a checkpoint also records: a fold run reused from before a
        default changed must be scored with today's default unless the method names one, or the same
        command would give different rows depending on which runs were already on disk."""
        fields = PostprocessConfig.__dataclass_fields__
        unknown = sorted(set(self.score_options) - set(fields) - {"residual", "channels"})
        if unknown:
            raise ConfigError(f"{self.label}: {', '.join(unknown)} is not a scoring option (residual or post-processing: "
                              f"{', '.join(fields)})")
        own = model_options(self.model).get("residual")  # an ensemble has none: its members keep their own
        residual = self.score_options.get("residual") or self.options.get("residual") or base.residual \
            or (own.default if own is not None else None)
        post = replace(base.post, **{k: v for k, v in self.score_options.items() if k in fields})
        channels = self.score_options.get("channels", base.channels)
        if isinstance(channels, str):  # real_bench: channels=flair+t2
            channels = tuple(channels.split("+"))
        return ScoringRecipe(residual, post, channels)

    @property
    def run_name(self) -> str:
        opts = "".join(f"-{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.model}{opts}-e{self.epochs}" + (f"-m{self.max_minutes:g}" if self.max_minutes else "")


@dataclass
class CrossValConfig:
    data: str
    methods: list[MethodSpec]
    modalities: tuple[str, ...] = ("flair",)
    image_size: int = 128
    folds: int = 5
    val_cases: int = 2
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-4
    device: str | None = None
    n_boot: int = 1000
    max_folds: int | None = None  # score only the first N folds (a quick check; not every patient is then tested)
    # Only patients who have all of these sequences: compares input choices on one cohort (e.g. FLAIR alone
    # vs four channels on the patients that have all four).
    cohort_modalities: tuple[str, ...] = ()
    recipe: ScoringRecipe = field(default_factory=ScoringRecipe)

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.cohort_modalities = tuple(self.cohort_modalities)
        labels = [m.label for m in self.methods]
        if len(set(labels)) != len(labels) or set(labels) & set(BASELINES):
            raise ConfigError(f"method labels must be unique and differ from the baselines, got {labels}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["cohort_modalities"] = list(self.cohort_modalities)
        d["recipe"] = self.recipe.to_dict()
        return d


def _same_config(saved: Any, tc) -> bool:
    """Whether a finished run's saved training settings are ``tc``. Read back through ``TrainConfig``, so a
    setting added since the run was trained counts at its default (hours of fold runs are not retrained
    because a new option appeared) while any value that differs still does."""
    from uad.training.config import TrainConfig

    try:
        return TrainConfig.from_dict(saved) == tc
    except UADError:
        return False


def _same_model(saved: Any, spec: MethodSpec, config: CrossValConfig) -> bool:
    """Whether a run's recorded model (``hparams`` in its config.json) is the one ``spec`` builds today: the same
    options do not make the same model when a default has changed since the run was trained."""
    if not isinstance(saved, dict):
        return False
    try:
        return recorded_hparams(spec.model, saved) == recorded_hparams(spec.model, {
            "in_channels": len(config.modalities), "image_size": config.image_size,
            **resolved_options(spec.model, spec.options)})
    except UADError:
        return False


def _fold_run(config: CrossValConfig, spec: MethodSpec, fold: dict[str, list[str]], run_dir: Path, progress: bool) -> Path:
    """Train (or reuse) one method on one fold; returns the checkpoint folder to score."""
    from uad.training.config import TrainConfig
    from uad.training.trainer import train

    tc = TrainConfig(model=spec.model, data=config.data, modalities=config.modalities, image_size=config.image_size,
                     epochs=spec.epochs, batch_size=config.batch_size, lr=config.lr, max_minutes=spec.max_minutes,
                     seed=config.seed, device=config.device, model_options=dict(spec.options), cases=fold)
    status = folders.read_status(run_dir) or {}
    saved = fileio.read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    if status.get("state") == "completed" and _same_config(saved.get("train"), tc) \
            and _same_model(saved.get("hparams"), spec, config) and (run_dir / "best").is_dir():
        log.info("reusing %s", run_dir)
        return run_dir / "best"
    # A stale or different-config run in this fold's folder is moved aside by the trainer's own --overwrite.
    train(tc, run_dir=run_dir, progress=progress, overwrite=run_dir.exists())
    state = (folders.read_status(run_dir) or {}).get("state")
    if state != "completed":  # e.g. SIGTERM cancels the fold's training: stop the whole cross-validation
        raise KeyboardInterrupt(f"{run_dir}: training {state}; cross-validation stopped")
    return run_dir / "best"


def _fold_ensemble(member_runs: list[Path], ckpts: list, recipe: ScoringRecipe, device):
    """The ensemble of the members' fold runs (``ckpts`` loaded from them), scaled on the fold's validation patients."""
    from uad.evaluation.ensembles import DEFAULT_RATE, build, member_scales

    base = ScoringRecipe(None, recipe.post)  # each member scaled with its own residual
    return build(ckpts, member_scales(member_runs, ckpts, base, DEFAULT_RATE, device))


def _members(spec: MethodSpec, before: list[str]) -> list[str]:
    members = list(spec.options.get("members") or [])
    missing = [m for m in members if m not in before]
    if len(members) < 2 or missing:
        raise ConfigError(f"{spec.label}: an ensemble's members must be two or more methods listed before it "
                          f"(not found: {', '.join(missing) or 'none given'})")
    return members


def fold_tally_path(out: Path, k: int, label: str) -> Path:
    """Where fold ``k`` (1-based) of method ``label`` is kept: a readable name, made unique by a hash of the label."""
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", label)[:80]
    return out / "folds" / f"fold{k}" / f"{slug}-{hashlib.sha1(label.encode()).hexdigest()[:8]}.npz"


def _fold_signature(config: CrossValConfig, fold: dict[str, list[str]], label: str, recipe: ScoringRecipe,
                    spec: MethodSpec | None) -> dict[str, Any]:
    """Everything that decides a method's tally on a fold: a kept tally is pooled again only when all of it matches.
    The data folder's own path is not part of it (the same cohort may sit elsewhere on another machine)."""
    sig = {"method": label, "fold": fold, "modalities": list(config.modalities), "image_size": config.image_size,
           "folds": config.folds, "val_cases": config.val_cases, "seed": config.seed,
           "cohort_modalities": list(config.cohort_modalities), "recipe": recipe.to_dict()}
    if spec is not None:
        sig.update(spec=asdict(spec), batch_size=config.batch_size, lr=config.lr)
        if spec.model != "ensemble":  # its members' signatures hold theirs
            sig["hparams"] = resolved_options(spec.model, spec.options)  # the defaults it was made with too
    return json.loads(json.dumps(sig))  # tuples as lists: what the file gives back


def _as_recorded(signature: Any) -> Any:
    """A kept signature from before signatures held the model's options (``hparams``), as it would hold them now:
    the options it names over the values its model had then (``recorded_defaults``, else today's defaults)."""
    if not isinstance(signature, dict):
        return signature
    out = dict(signature)
    spec = out.get("spec")
    if "hparams" not in out and isinstance(spec, dict) and isinstance(spec.get("options"), dict) \
            and isinstance(spec.get("model"), str) and spec["model"] != "ensemble":
        try:
            recorded = recorded_hparams(spec["model"], spec["options"])
            out["hparams"] = json.loads(json.dumps(resolved_options(spec["model"], recorded)))
        except (UADError, TypeError):
            return signature
    if isinstance(out.get("members"), list):
        out["members"] = [_as_recorded(m) for m in out["members"]]
    return out


def _kept_tally(path: Path, signature: dict[str, Any]) -> tuple[Tally, dict[str, Any]] | None:
    """A fold's kept tally and its provenance when its signature matches; None (logged) when absent, stale or unreadable
    (the fold is then scored again and the file replaced: it is this cross-validation's own cache, never a user's file)."""
    if not path.is_file():
        return None
    try:
        tallies, meta = tally_io.read(path, ["tally"])
    except tally_io.TallyFileError as exc:
        log.warning("%s; scoring the fold again", exc)
        return None
    if not meta or _as_recorded(meta.get("signature")) != signature:
        log.info("%s was made with other settings; scoring the fold again", path)
        return None
    provenance = meta.get("provenance")
    return tallies["tally"], provenance if isinstance(provenance, dict) else {}


def _keep_tally(path: Path, tally: Tally, signature: dict[str, Any], provenance: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tally_io.write(path, {"tally": tally}, meta={"signature": signature, "provenance": provenance})


def _provenance(ckpts: list) -> dict[str, Any]:
    return {"weights_sha256": [c.record.weights_sha256 for c in ckpts], "uad": __version__,
            "scored": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _paired(merged: dict, methods: dict[str, Any], labels: list[str], config: CrossValConfig) -> list[dict[str, Any]]:
    """Each method against the intensity baseline and against the best method by pooled pixel AP, on the same
    patients (every patient tested once across folds): A − B with a paired patient-bootstrap interval."""
    if not labels or not config.n_boot:
        return []
    arrays = {name: CaseArrays.from_tally(t) for name, t in merged.items() if t.case_order}
    best = max(labels, key=lambda n: methods[n].get("pixel_ap") or float("-inf"))
    pairs = [(n, "intensity") for n in labels] + [(n, best) for n in labels if n != best]
    out = []
    for a, b in pairs:
        if a in arrays and b in arrays:
            diffs = paired_differences(arrays[a], arrays[b], config.n_boot, config.seed)
            out.append({"a": a, "b": b, "best": b == best, "differences": [d.to_dict() for d in diffs]})
    return out


def cross_validate(config: CrossValConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run the cross-validation; writes ``<out>/crossval.json`` and returns its content."""
    out = Path(out)
    root = Path(config.data)
    pre = PreprocessConfig(modalities=config.modalities, image_size=config.image_size)
    store = build_store(root, pre, progress=progress)
    labelled = store.labelled_ids
    if config.cohort_modalities:
        complete = {c.case_id for c in discover_cases(root)[0] if all(m in c.modalities for m in config.cohort_modalities)}
        labelled = [c for c in labelled if c in complete]
    if len(labelled) < config.folds:
        raise ConfigError(f"{root}: {len(labelled)} labelled cases cannot fill {config.folds} folds")
    folds = kfold_cases(labelled, config.folds, config.seed, config.val_cases)[:config.max_folds]
    from uad.core.devices import pick_device

    device = str(pick_device(config.device))

    per_fold: dict[str, list] = {name: [] for name in [m.label for m in config.methods] + list(BASELINES)}
    fold_summaries: dict[str, list[dict[str, Any]]] = {name: [] for name in per_fold}
    provenance: dict[str, list[dict[str, Any]]] = {name: [] for name in per_fold}
    specs = {m.label: m for m in config.methods}
    t0 = time.perf_counter()
    timings: dict[str, float] = {m.label: 0.0 for m in config.methods}
    for k, fold in enumerate(folds, start=1):
        log.info("fold %d/%d: %d train, %d val, %d test patients", k, len(folds), len(fold["train"]),
                 len(fold["val"]), len(fold["test"]))
        fold_runs: dict[str, Path] = {}

        def run_of(label: str, fold=fold, k=k, fold_runs=fold_runs) -> Path:  # trained (or reused) only when needed
            if label not in fold_runs:
                spec = specs[label]
                fold_runs[label] = _fold_run(config, spec, fold, out / "runs" / f"{spec.run_name}-fold{k}", progress)
            return fold_runs[label]

        wanted = {b: _fold_signature(config, fold, b, config.recipe, None) for b in BASELINES}
        kept = {b: _kept_tally(fold_tally_path(out, k, b), wanted[b]) for b in BASELINES}
        todo = [b for b in BASELINES if kept[b] is None]
        if todo:
            tallies, _ = score_cohort(store, [baseline(b) for b in todo], fold["test"], fold["val"], config.recipe)
            for b in todo:
                kept[b] = tallies[b], _provenance([])
                _keep_tally(fold_tally_path(out, k, b), tallies[b], wanted[b], kept[b][1])
        signatures: dict[str, dict[str, Any]] = {}
        for b in BASELINES:
            per_fold[b].append(kept[b][0])
            provenance[b].append(kept[b][1])
        for i, spec in enumerate(config.methods):
            t_method = time.perf_counter()
            recipe = spec.recipe(config.recipe)
            members = _members(spec, [m.label for m in config.methods[:i]]) if spec.model == "ensemble" else []
            signature = _fold_signature(config, fold, spec.label, recipe, spec)
            if members:  # an ensemble's tally depends on how each member was trained and scored
                signature["members"] = [signatures[m] for m in members]
            signatures[spec.label] = signature
            path = fold_tally_path(out, k, spec.label)
            found = _kept_tally(path, signature)
            if found is None:
                if members:  # built from this fold's member runs, scaled on this fold's validation patients
                    ckpts = [ckpt_weights.load(run_of(m), device=device) for m in members]
                    ensemble = _fold_ensemble([run_of(m) for m in members], ckpts, recipe, device)
                    scorer = ModelScorer(ensemble, device=device, modalities=config.modalities)
                else:
                    ckpt = ckpt_weights.load(run_of(spec.label), device=device)
                    scorer, ckpts = ModelScorer.of(ckpt, device=device), [ckpt]
                tallies, _ = score_cohort(store, [scorer], fold["test"], fold["val"], recipe)
                found = tallies[scorer.name], _provenance(ckpts)
                _keep_tally(path, found[0], signature, found[1])
                timings[spec.label] += time.perf_counter() - t_method
            per_fold[spec.label].append(found[0])
            provenance[spec.label].append(found[1])
        for name, parts in per_fold.items():
            fold_summaries[name].append(summarise(parts[-1], n_boot=0, seed=config.seed)[0])

    methods: dict[str, Any] = {}
    merged = {name: merge_tallies(parts) for name, parts in per_fold.items()}
    for name, parts in per_fold.items():
        methods[name] = summarise(merged[name], n_boot=config.n_boot, seed=config.seed)[0]
        methods[name]["model"] = name
        spec = next((m for m in config.methods if m.label == name), None)
        methods[name]["recipe"] = (spec.recipe(config.recipe) if spec is not None else config.recipe).to_dict()
        methods[name]["per_fold"] = fold_summaries[name]
        methods[name]["per_fold_provenance"] = provenance[name]
        if name in timings:
            methods[name]["seconds"] = timings[name]
    result = {
        "paired": _paired(merged, methods, [m.label for m in config.methods], config),
        "kind": "crossval",
        "data_root": str(root.resolve()),
        "config": config.to_dict(),
        "folds": folds,
        "n_cases": len(labelled),
        "methods": methods,
        "pooling": "each patient tested once; slice scores, pixel histograms and threshold counts pooled over folds",
        "seconds": time.perf_counter() - t0,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    fileio.write_json(out / "crossval.json", result)
    return result
