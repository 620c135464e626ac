"""Anomaly maps kept on disk: a run's maps of a case are computed once per scoring recipe and reused.

An entry is one file, ``<cache>/maps/<key>.npz``, written atomically (``uad.core.fileio``), whose key is
the SHA-256 of everything the maps depend on:

* the weights (the checkpoint's ``weights_sha256``, which loading verifies against the weights file);
* the scoring recipe, with the model's own residual filled in (``ScoringRecipe.for_model``);
* the case's source files (path, size, mtime of each) and the preprocessing config, as the slice cache
  fingerprints them (``uad.data.store.fingerprint``);
* ``VERSION``, raised whenever the code that makes maps changes what it computes.

A new checkpoint, recipe, preprocessing or an edited file therefore never meets old maps. The entry also
holds that key's parts, which are compared on every read, and the arrays' shapes are checked against the
case: an entry that does not match, or cannot be read at all, is computed again and replaced, never
trusted. Reading an entry marks it used (its mtime); past ``max_bytes`` the least recently used entries
are removed, as the slice cache does (``uad.data.cache``).

The same folder keeps the case the maps are computed from, as ``uad.data.preprocess.preprocess_case`` returns
it (float32 images, masks, slice table, geometry), one ``case-<key>.npz`` per case files and preprocessing
(``cached_working_case``), under the same rules. A restarted app then reads a case it showed before instead of
decoding its NIfTI files and preprocessing them again (0.4–0.9 s of CPU per demo case on the development
machine; reading the entry back takes milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import weakref
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from uad.core import fileio, paths
from uad.data.cases import Case
from uad.data.preprocess import (
    SLICE_TABLE_COLUMNS,
    PreprocessConfig,
    SliceGeometry,
    WorkingCase,
    preprocess_case,
)
from uad.data.store import fingerprint
from uad.scoring.maps import VolumeScores, score_case
from uad.scoring.recipe import ScoringRecipe

log = logging.getLogger("uad.scoring.cache")

VERSION = 1  # raise when a change to the scoring code changes the maps it makes
CASE_VERSION = 1  # raise when a change to the preprocessing code changes the working cases it makes
MAX_BYTES = 2 * 2**30  # default size limit of the maps cache (about 100 cases of 150 slices at 128²)
MAX_BYTES_ENV = "UAD_MAPS_CACHE_MAX_BYTES"
STALE_TMP_S = 3600.0  # a temporary file this old is left over from a killed writer
# What reading a damaged or foreign file can raise: it is then recomputed.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError)


DIR_ENV = "UAD_MAPS_CACHE_DIR"  # where the entries live (default: <cache>/maps)


def cache_dir() -> Path:
    folder = os.environ.get(DIR_ENV)
    return Path(folder).resolve() if folder else paths.cache_dir() / "maps"


def max_bytes() -> int:
    value = os.environ.get(MAX_BYTES_ENV)
    try:
        return int(value) if value else MAX_BYTES
    except ValueError:
        log.warning("%s=%r is not a number of bytes; using %d", MAX_BYTES_ENV, value, MAX_BYTES)
        return MAX_BYTES


def entry_key(weights_sha256: str, recipe: ScoringRecipe, case: Case, config: PreprocessConfig) -> dict[str, Any]:
    """The parts of an entry's key (``recipe`` with the model's residual filled in)."""
    return {"version": VERSION, "weights_sha256": weights_sha256, "recipe": recipe.to_dict(),
            "source": fingerprint(case, config)}


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cached_score_case(scorer, working: WorkingCase, recipe: ScoringRecipe, *, case: Case | None, config: PreprocessConfig,
                      weights_sha256: str | None, root: str | Path | None = None) -> VolumeScores:
    """``uad.scoring.maps.score_case(scorer, working, recipe)``, read from the maps cache when this run's maps of
    this case with this recipe are there, else computed and kept.

    ``case`` and ``config`` are where ``working`` came from (its source files and preprocessing) and
    ``weights_sha256`` the scorer's checkpoint's weights; without either (None) nothing is cached.
    A scorer that keeps reconstructions needs an entry that holds one.
    """
    if not weights_sha256 or case is None:
        return score_case(scorer, working, recipe)
    folder = Path(root) if root is not None else cache_dir()
    key = entry_key(weights_sha256, recipe.for_model(scorer.model_residual()), case, config)
    path = folder / f"{_digest(key)}.npz"
    need_recon = bool(getattr(scorer, "keep_reconstruction", False))
    with _entry_lock(path):  # a second caller (another session, the app's prefetch) waits and reads, never recomputes
        found = _read(path, key, working, need_recon)
        if found is not None:
            return found
        vs = score_case(scorer, working, recipe)
        try:
            _write(path, key, vs)
            evict(folder, max_bytes(), keep=path)
        except OSError as exc:  # a full or read-only disk costs the reuse, never the maps
            log.warning("could not keep the maps of %s in %s: %s", working.case_id, folder, exc)
    return vs


class _EntryLock:
    """A lock that lives as long as someone waits for or holds it (see ``_entry_lock``)."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> _EntryLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


_locks: weakref.WeakValueDictionary[str, _EntryLock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()


def _entry_lock(path: Path) -> _EntryLock:
    """One lock per entry within this process (the app's sessions and its prefetch are threads of one server):
    callers asking for the same entry at once compute it once. An entry's lock is dropped when no caller holds or
    waits for it, so the table holds only entries being computed. Writers in other processes stay safe through
    the atomic rename; they may only compute an entry twice."""
    with _locks_guard:
        lock = _locks.get(str(path))
        if lock is None:
            lock = _locks[str(path)] = _EntryLock()
        return lock


def _read(path: Path, key: dict[str, Any], working: WorkingCase, need_recon: bool) -> VolumeScores | None:
    """The entry at ``path`` if it is this key's, whole and of this case's shape; None (and a log line) if not."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) != key:
                raise ValueError("another key's maps")
            maps, scores, mask = z["maps"], z["scores"], z["mask"]
            recon = z["reconstruction"] if "reconstruction" in z.files else None
            recipe = ScoringRecipe.from_dict(key["recipe"])
        shape = tuple(np.shape(working.brain))
        if (maps.shape != shape or maps.dtype != np.float32 or mask.shape != shape or mask.dtype != bool
                or scores.shape != shape[:1] or (recon is not None and recon.shape != np.shape(working.images))):
            raise ValueError("arrays of the wrong shape or type for this case")
    except _UNREADABLE as exc:
        log.warning("maps cache entry %s is unusable (%s): computing the maps again", path, exc)
        return None
    if need_recon and recon is None:
        return None
    try:
        os.utime(path)  # last use, for the least-recently-used eviction
    except OSError:
        pass
    return VolumeScores(maps, scores, mask, recon, recipe)


def _write(path: Path, key: dict[str, Any], vs: VolumeScores) -> None:
    arrays = {"key": np.array(json.dumps(key, sort_keys=True)), "maps": np.asarray(vs.maps, np.float32),
              "scores": np.asarray(vs.scores), "mask": np.asarray(vs.mask, bool)}
    if vs.reconstruction is not None:
        arrays["reconstruction"] = np.asarray(vs.reconstruction, np.float32)
    with fileio.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def working_case_key(case: Case, config: PreprocessConfig) -> dict[str, Any]:
    """The parts of a working-case entry's key: the case's files and the preprocessing config."""
    return {"version": CASE_VERSION, "kind": "working case", "source": fingerprint(case, config)}


def cached_working_case(case: Case, config: PreprocessConfig, root: str | Path | None = None) -> WorkingCase:
    """``preprocess_case(case, config)``, read from this cache when kept there, else computed and kept.

    Equal to a fresh preprocessing array for array (float32 images, as computed, not the slice store's float16):
    the entry holds the arrays themselves. An entry of another key, damaged or of inconsistent shapes is
    computed again and replaced, never trusted; a disk that cannot keep it costs the reuse, never the case."""
    folder = Path(root) if root is not None else cache_dir()
    key = working_case_key(case, config)
    path = folder / f"case-{_digest(key)}.npz"
    with _entry_lock(path):
        found = _read_working(path, key, case.case_id)
        if found is not None:
            return found
        working = preprocess_case(case, config)
        try:
            _write_working(path, key, working)
            evict(folder, max_bytes(), keep=path)
        except OSError as exc:
            log.warning("could not keep the preprocessed %s in %s: %s", case.case_id, folder, exc)
    return working


def _read_working(path: Path, key: dict[str, Any], case_id: str) -> WorkingCase | None:
    if not path.is_file():
        return None
    try:
        import pandas as pd

        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["key"] != key or meta["case_id"] != case_id:
                raise ValueError("another key's case")
            images, tumour, brain = z["images"], z["tumour"], z["brain"]
            table = pd.DataFrame({c: z[f"table_{c}"] for c in SLICE_TABLE_COLUMNS})
        geometry = SliceGeometry.from_dict(meta["geometry"])
        S, size = len(geometry.kept), geometry.image_size
        if (images.dtype != np.float32 or images.ndim != 4 or images.shape[0] != S or images.shape[2:] != (size, size)
                or tumour.shape != (S, size, size) or brain.shape != tumour.shape or tumour.dtype != bool
                or brain.dtype != bool or len(table) != S):
            raise ValueError("arrays of the wrong shape or type for this case")
        working = WorkingCase(case_id, images, tumour, brain, table, geometry, bool(meta["labelled"]),
                              [(float(lo), float(hi)) for lo, hi in meta["norm"]])
    except (*_UNREADABLE, TypeError) as exc:
        log.warning("cache entry %s is unusable (%s): preprocessing the case again", path, exc)
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    return working


def _write_working(path: Path, key: dict[str, Any], w: WorkingCase) -> None:
    meta = {"key": key, "case_id": w.case_id, "geometry": w.geometry.to_dict(), "labelled": bool(w.labelled),
            "norm": [[float(lo), float(hi)] for lo, hi in w.norm]}
    arrays = {"meta": np.array(json.dumps(meta, sort_keys=True)), "images": np.asarray(w.images, np.float32),
              "tumour": np.asarray(w.tumour, bool), "brain": np.asarray(w.brain, bool)}
    arrays.update({f"table_{c}": w.table[c].to_numpy() for c in SLICE_TABLE_COLUMNS})
    with fileio.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def evict(folder: str | Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the folder holds at most ``limit`` bytes (``keep`` stays);
    also temporary files left by killed writers. Returns what was removed."""
    folder = Path(folder)
    entries, removed = [], []
    try:
        listing = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for item in listing:
        try:
            st = item.stat()
        except OSError:
            continue
        if item.name.endswith(".npz"):
            entries.append((st.st_mtime, st.st_size, Path(item.path)))
        elif item.name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_S:
            Path(item.path).unlink(missing_ok=True)
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        if keep is not None and path == keep:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        total -= size
    return removed


# -- what a viewer shows: one case, one checkpoint, through both caches ------------------------------------------
def working_case(root: str | Path, case: Case | str, config: PreprocessConfig) -> WorkingCase:
    """A case at working size as viewers read it: from the slice store when up to date there, else from (or into)
    this cache (``cached_working_case``). ``case``: a discovered case, or a case id looked up under ``root``."""
    from uad.data.store import load_working_case

    return load_working_case(root, case, config, preprocess=cached_working_case)


def viewer_maps(checkpoint, working: WorkingCase, recipe: ScoringRecipe, case: Case) -> VolumeScores:
    """A loaded checkpoint's maps of ``working`` (with reconstructions, for display) with ``recipe``, through
    the maps cache: the one call Explore and its prefetch (``uad.jobs.prefetch``) make, so they share entries."""
    from uad.scoring.scorers import ModelScorer

    return cached_score_case(ModelScorer.of(checkpoint, keep_reconstruction=True), working, recipe, case=case,
                             config=checkpoint.preprocess, weights_sha256=checkpoint.record.weights_sha256)
