"""A scorer's ``cohort.Tally`` as arrays, and back, without loss.

One encoding serves two files: ``cases.npz`` beside an evaluation's ``metrics.json`` (what a paired
bootstrap between two evaluations reads) and the per-fold tallies a cross-validation keeps, so that a fold
scored once (hours of training on a CPU) is pooled again later, on another machine, without its runs.
Arrays of one tally sit under ``<prefix>/<field>``; a file may hold several tallies (one per scorer).
Reading checks every array's type, shape and bounds against the others and names the file when one fails.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from uad.core import fileio
from uad.evaluation import metrics
from uad.evaluation.cohort import Tally

_ACCUMULATORS = ("pixels", "brain")


def encode(t: Tally, prefix: str) -> dict[str, np.ndarray]:
    """Every field of ``t`` as arrays under ``prefix/``. Per-case lists are stacked in scoring order."""
    a: dict[str, np.ndarray] = {}
    n_rates = len(t.thresholds)
    a[f"{prefix}/rates"] = np.asarray([th["rate"] for th in t.thresholds], float)
    a[f"{prefix}/thresholds"] = np.asarray([np.nan if th["threshold"] is None else th["threshold"] for th in t.thresholds], float)
    a[f"{prefix}/calibration_fpr"] = np.asarray(
        [np.nan if th.get("calibration_fpr") is None else th["calibration_fpr"] for th in t.thresholds], float)
    a[f"{prefix}/healthy_quantiles"] = np.asarray(t.healthy_quantiles, float).reshape(-1, 2)
    for name in _ACCUMULATORS:
        acc: metrics.PixelAccumulator = getattr(t, name)
        a[f"{prefix}/{name}_range"] = np.asarray(acc.score_range, float)
        a[f"{prefix}/{name}_hist"] = np.stack([acc.pos, acc.neg])
        a[f"{prefix}/{name}_clipped"] = np.asarray([acc.n_clipped_low, acc.n_clipped_high], np.int64)
    a[f"{prefix}/cases"] = np.asarray(t.case_order, dtype=str)
    bins = t.pixels.n_bins
    a[f"{prefix}/pos"] = np.stack(t.case_pos) if t.case_pos else np.zeros((0, bins), np.int64)
    a[f"{prefix}/neg"] = np.stack(t.case_neg) if t.case_neg else np.zeros((0, bins), np.int64)
    a[f"{prefix}/counts"] = np.stack(t.case_counts) if t.case_counts else np.zeros((0, n_rates, 3), np.int64)
    a[f"{prefix}/healthy"] = np.stack(t.case_healthy) if t.case_healthy else np.zeros((0, n_rates + 1), np.int64)
    a[f"{prefix}/slice_cases"] = np.asarray(t.case_ids, dtype=str)
    a[f"{prefix}/slice_labels"] = np.concatenate(t.labels) if t.labels else np.zeros(0, np.int64)
    a[f"{prefix}/slice_scores"] = np.concatenate(t.scores) if t.scores else np.zeros(0, np.float32)
    return a


META = "__meta__"  # a JSON object stored beside the tallies (what produced them)


def write(path: str | Path, tallies: dict[str, Tally], meta: dict | None = None) -> None:
    """Tallies by name (and ``meta``, a JSON object) into one compressed ``.npz``, written atomically."""
    arrays = {META: np.asarray(json.dumps(meta, sort_keys=True))} if meta is not None else {}
    for name, t in tallies.items():
        arrays.update(encode(t, name))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    fileio.write_bytes(path, buf.getvalue())


class TallyFileError(ValueError):
    """A tally file that is missing, unreadable or malformed; the message names the file."""


def decode(z, prefix: str, path: Path) -> Tally:
    """The tally under ``prefix/`` of an open ``.npz``; a ValueError naming ``path`` when any array is missing,
    of the wrong kind, or disagrees with the others in size."""
    def bad(what: str) -> TallyFileError:
        return TallyFileError(f"{path}: tally {prefix!r}: {what}")

    def get(field: str, kind: str, ndim: int) -> np.ndarray:
        key = f"{prefix}/{field}"
        if key not in z.files:
            raise bad(f"no array {field!r}")
        arr = z[key]
        if arr.dtype.kind not in kind or arr.ndim != ndim:
            raise bad(f"{field} must be a {ndim}-D array of kind {kind!r}, got {arr.dtype} with shape {arr.shape}")
        return arr

    rates, thr, cal = get("rates", "f", 1), get("thresholds", "f", 1), get("calibration_fpr", "f", 1)
    n_rates = len(rates)
    if thr.shape != rates.shape or cal.shape != rates.shape or not np.all((rates > 0) & (rates < 1)):
        raise bad("rates must lie in (0, 1), one threshold and calibration FPR each")
    if not np.all(np.isfinite(thr) | np.isnan(thr)) or not np.all(np.isnan(cal) | ((cal >= 0) & (cal <= 1))):
        raise bad("thresholds must be finite (NaN: none) and calibration FPRs in [0, 1]")
    quantiles = get("healthy_quantiles", "f", 2)
    if quantiles.shape[1:] != (2,) or not np.all(np.isfinite(quantiles)):
        raise bad("healthy_quantiles must be finite (quantile, value) pairs")
    t = Tally(thresholds=[{"rate": float(r), "threshold": None if np.isnan(h) else float(h),
                           "calibration_fpr": None if np.isnan(c) else float(c)} for r, h, c in zip(rates, thr, cal)],
              healthy_quantiles=[(float(q), float(v)) for q, v in quantiles])
    for name in _ACCUMULATORS:
        rng, hist, clipped = get(f"{name}_range", "f", 1), get(f"{name}_hist", "iu", 2), get(f"{name}_clipped", "iu", 1)
        if rng.shape != (2,) or hist.shape[0] != 2 or hist.shape[1] < 1 or clipped.shape != (2,) \
                or (hist < 0).any() or (clipped < 0).any():
            raise bad(f"{name}: a range, two non-negative histograms and two clip counts expected")
        try:
            acc = metrics.PixelAccumulator.from_histograms(hist[0], hist[1], (float(rng[0]), float(rng[1])))
        except ValueError as exc:
            raise bad(f"{name}: {exc}") from None
        acc.n_clipped_low, acc.n_clipped_high = int(clipped[0]), int(clipped[1])
        setattr(t, name, acc)
    cases = get("cases", "U", 1)
    pos, neg = get("pos", "iu", 2), get("neg", "iu", 2)
    counts, healthy = get("counts", "iu", 3), get("healthy", "iu", 2)
    n = len(cases)
    if pos.shape != (n, t.pixels.n_bins) or neg.shape != pos.shape or counts.shape != (n, n_rates, 3) \
            or healthy.shape != (n, n_rates + 1) or len(set(cases.tolist())) != n:
        raise bad("per-case arrays must be one row per distinct case, histograms with the pooled bins")
    if (pos < 0).any() or (neg < 0).any() or (counts < 0).any() or (healthy < 0).any():
        raise bad("per-case counts must not be negative")
    slice_cases, labels, scores = get("slice_cases", "U", 1), get("slice_labels", "iu", 1), get("slice_scores", "f", 1)
    if not len(slice_cases) == len(labels) == len(scores) or not set(slice_cases.tolist()) <= set(cases.tolist()) \
            or not np.isin(labels, (0, 1)).all():
        raise bad("per-slice arrays must agree in length, name scored cases and hold 0/1 labels")
    t.case_order = [str(c) for c in cases]
    t.case_pos, t.case_neg = list(pos.astype(np.int64)), list(neg.astype(np.int64))
    t.case_counts, t.case_healthy = list(counts.astype(np.int64)), list(healthy.astype(np.int64))
    t.case_ids = [str(c) for c in slice_cases]
    t.labels, t.scores = ([labels.astype(np.int64)], [scores]) if len(labels) else ([], [])
    return t


def read(path: str | Path, names: list[str]) -> tuple[dict[str, Tally], dict | None]:
    """The named tallies from a file ``write`` made, and its meta object (None when it has none); a
    ``TallyFileError`` naming the file when it is missing, unreadable or malformed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = None
            if META in z.files:
                raw = z[META]
                if raw.dtype.kind != "U" or raw.ndim != 0:
                    raise TallyFileError(f"{path}: {META} must be one JSON text")
                meta = json.loads(str(raw[()]))
                if not isinstance(meta, dict):
                    raise TallyFileError(f"{path}: {META} must be a JSON object")
            return {name: decode(z, name, path) for name in names}, meta
    except TallyFileError:
        raise
    except FileNotFoundError:
        raise TallyFileError(f"{path}: no such file") from None
    # Truncated, not a zip, a damaged member, or an array that would need pickle: numpy's and zipfile's errors.
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, RecursionError) as exc:
        raise TallyFileError(f"{path}: unreadable tally file ({exc})") from None
