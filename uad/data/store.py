"""The slice store: each case preprocessed once into an on-disk cache, read back memory-mapped.

Layout (one folder per dataset and preprocessing config)::

    <cache>/<dataset-name>-<hash of its path>/<config key>/
        manifest.json                 written last, atomically: config, cases, skipped cases
        last_used, .lock              when the entry was last opened, and the lock every process
                                      building or reading it holds (see ``uad.data.cache``)
        cases/<case_id>/meta.json     per-slice table, geometry, source fingerprint, size, sampled hash and
                                      full SHA-1 of each array file (written last: it marks the entry complete)
        cases/<case_id>/images.npy    (S, C, H, W) float16 in [0, 1]
        cases/<case_id>/tumour.npy    (S, H, W) bool, whole tumour at working size
        cases/<case_id>/brain.npy     (S, H, W) bool

A case folder is built under a temporary name and renamed into place when complete, and a case is
reused only if its recorded fingerprint (path, size, mtime of each source file + config) still matches,
so an interrupted build never leaves a cache that reads as valid. Array files are fsynced before the
rename, and checked against the sizes and hashes in meta.json: cheaply (size and the first and last
64 KiB) whenever ``build_store`` reuses a case, and in full (the SHA-1 of every byte; measured 18 ms
for an 8.4 MB real_dev case on the 2-core development machine) when a process first reads a case (``SliceStore.case``) and when ``prepare`` runs. A file
damaged afterwards (a disk filling up, a crash before the data reached the disk, bytes changed in the
middle) is rebuilt from its source (with a warning) instead of failing later in training or evaluation
as something else. A short write while building is a full disk: the build stops with the disk-full
error naming the folder, and no partial case is kept. Changing the config selects another folder;
changing one case's files rebuilds only that case.

``SliceStore.case`` reads a case back as a ``WorkingCase`` (the type fresh preprocessing returns), and
``load_working_case`` is the one call for a single case: cached when up to date, else preprocessed now.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
import weakref
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uad.core import fileio, paths
from uad.core.errors import DataError, UADError
from uad.core.workers import spawn_pool, submit_all
from uad.data import cache, identity
from uad.data.cases import Case, Skipped, discover_cases
from uad.data.preprocess import (
    SLICE_TABLE_COLUMNS,
    PreprocessConfig,
    SliceGeometry,
    WorkingCase,
    preprocess_case,
)

log = logging.getLogger("uad.data.store")

STORE_VERSION = 3  # 2: meta.json records each array file's size and sampled hash; 3: and its full SHA-1
ARRAYS = ("images", "tumour", "brain")
HASH_SAMPLE = 1 << 16  # bytes hashed at each end of an array file: cheap to check on every reuse


def fingerprint(case: Case, config: PreprocessConfig) -> dict[str, Any]:
    """What a cached case depends on: its source files (path, size, mtime) and the config."""
    files = []
    for path in case.files(config.modalities):
        st = path.stat()
        files.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return {"version": STORE_VERSION, "config": config.key(), "files": files}


MAX_NAME_PART = 64  # of a dataset's or case's folder name inside a derived name (a file name has at most 255 bytes)


def store_dir(data_root: str | Path, config: PreprocessConfig, cache_root: str | Path | None = None) -> Path:
    return Path(cache_root or paths.cache_dir()) / identity.folder_key(Path(data_root).resolve()) / config.key()


def _work_name(kind: str, case_dir: Path) -> Path:
    """``.tmp-<case>-<pid>`` / ``.old-<case>-<pid>`` beside a case folder, its name bounded (a case folder may
    be named with up to 255 characters; a hash of it stands in for a long one)."""
    name = case_dir.name if len(case_dir.name) <= MAX_NAME_PART else hashlib.sha1(case_dir.name.encode()).hexdigest()[:16]
    return case_dir.parent / f".{kind}-{name}-{os.getpid()}"


def _write_case(case: Case, config: PreprocessConfig, case_dir: Path, fp: dict) -> dict:
    """Preprocess one case into ``case_dir`` atomically; returns its meta. Runs in a worker process."""
    pre = preprocess_case(case, config)
    tmp = _work_name("tmp", case_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        arrays = {"images": pre.images.astype(np.float16), "tumour": pre.tumour, "brain": pre.brain}
        files = {f"{name}.npy": _save_array(tmp / f"{name}.npy", arrays[name]) for name in ARRAYS}
        meta = {
            "case_id": case.case_id,
            "fingerprint": fp,
            "labelled": pre.labelled,
            "slices": {col: pre.table[col].tolist() for col in SLICE_TABLE_COLUMNS},
            "geometry": pre.geometry.to_dict(),
            "norm": [list(n) for n in pre.norm],
            "files": files,
        }
        fileio.write_json(tmp / "meta.json", meta)
        fileio.fsync_dir(tmp)
        # Swap in: the old folder (if any) is moved aside first, so a crash leaves either old or new.
        trash = _work_name("old", case_dir)
        if case_dir.exists():
            os.replace(case_dir, trash)
        os.replace(tmp, case_dir)
        fileio.fsync_dir(case_dir.parent)
        shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _save_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    """An ``.npy`` file flushed to disk; returns what ``entry_problem`` checks the file against later.

    Written through Python's file object rather than ``np.save``, whose C writer reports a full disk as a
    short write without an errno ("N requested and M written")."""
    array = np.ascontiguousarray(array)
    full = hashlib.sha1()
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
        header_end = fh.tell()
        data = memoryview(array.reshape(-1)).cast("B")
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if path.stat().st_size != header_end + data.nbytes:
        raise OSError(errno.ENOSPC, "short write", str(path))
    with open(path, "rb") as fh:
        full.update(fh.read(header_end))
    full.update(data)
    return {"size": path.stat().st_size, "sample_sha1": _sample_hash(path), "sha1": full.hexdigest()}


def _full_hash(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _sample_hash(path: Path) -> str:
    """SHA-1 of the first and last HASH_SAMPLE bytes: the header and the end, where truncation and
    unflushed writes show, without reading whole volumes on every reuse."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        h.update(fh.read(HASH_SAMPLE))
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(size - HASH_SAMPLE, 0))
        h.update(fh.read(HASH_SAMPLE))
    return h.hexdigest()


def entry_problem(case_dir: Path, meta: dict, full: bool = False) -> str | None:
    """Why the cached arrays of ``case_dir`` differ from what was written (None if they do not): by size and
    the hash of their ends, and with ``full`` by the SHA-1 of every byte."""
    files = meta.get("files")
    if not isinstance(files, dict):
        return "meta.json records no array files"
    for name in ARRAYS:
        record, path = files.get(f"{name}.npy"), case_dir / f"{name}.npy"
        if not isinstance(record, dict):
            return f"meta.json does not record {path.name}"
        try:
            size = path.stat().st_size
            if size != record.get("size"):
                return f"{path.name} has {size} bytes, {record.get('size')} were written"
            if _sample_hash(path) != record.get("sample_sha1"):
                return f"{path.name} does not hold what was written (hash differs)"
            if full and _full_hash(path) != record.get("sha1"):
                return f"{path.name} does not hold what was written (its SHA-1 differs: damaged inside)"
        except OSError as exc:
            return f"{path.name} is unreadable ({exc.strerror or exc})"
    return None


def _build_one(case: Case, config: PreprocessConfig, case_dir: Path, fp: dict) -> tuple[str, dict | None, str | None]:
    """One case → (id, meta, None), or (id, None, reason) when this case cannot be used.

    Whatever goes wrong with one case's data skips that case; a full disk stops the build (every case
    after it would fail the same way) with a DataError naming the cache folder.
    """
    from uad.core.errors import DiskFullError

    try:
        return case.case_id, _write_case(case, config, case_dir, fp), None
    except DiskFullError as exc:  # name the case's cache folder, not the temporary one that is gone
        raise DiskFullError(case_dir, exc.reason) from None
    except UADError as exc:
        return case.case_id, None, str(exc)
    except MemoryError:
        return case.case_id, None, "out of memory while preprocessing"
    except OSError as exc:
        written = fileio.write_error(exc, case_dir)  # a full or read-only cache: every later case fails alike
        if written is not None:
            raise written from None
        return case.case_id, None, f"{case.folder}: cannot be read or cached ({exc})"
    except Exception as exc:  # noqa: BLE001 - a bug or an exotic file must not stop the other cases
        return case.case_id, None, f"{case.folder}: cannot be preprocessed ({type(exc).__name__}: {exc})"


def _read_meta(case_dir: Path) -> dict | None:
    meta = _read_meta_file(case_dir / "meta.json")
    return meta if isinstance(meta, dict) else None


def _read_meta_file(path: Path):
    try:
        return fileio.read_json(path)
    except (OSError, ValueError, RecursionError):
        return None


def build_store(
    data_root: str | Path,
    config: PreprocessConfig = PreprocessConfig(),
    cache_root: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    max_cache_bytes: int | None = None,
    verify: bool = False,
) -> "SliceStore":
    """Preprocess every usable case under ``data_root`` (reusing up-to-date cached cases) and open the store.

    Cases that cannot be used are skipped and reported in ``store.skipped`` with the reason. ``verify``
    checks every reused case's arrays in full (``prepare`` does; otherwise each case is checked in full
    when a process first reads it). Nothing is written when nothing changed (a read-only cache that is up
    to date is read as it is).
    ``max_cache_bytes`` (default ``$UAD_CACHE_MAX_BYTES``, else no limit) caps the whole cache: after the
    build, the least recently used other entries are removed until it fits (see ``uad.data.cache``).
    """
    limit = max_cache_bytes if max_cache_bytes is not None else cache.max_bytes_from_env()  # a bad value fails first
    cases, skipped = discover_cases(data_root)
    root = store_dir(data_root, config, cache_root)
    hold = cache.use_entry(root, create=True)  # no `cache prune` removes the entry while we build it
    try:
        store = _build(data_root, config, root, cases, skipped, workers, progress, verify)
    finally:
        hold.release()
    if limit is not None:
        cache.enforce_limit(limit, root.parent.parent, keep=(root,))
    return store


def _build(data_root, config: PreprocessConfig, root: Path, cases: list[Case], skipped: list[Skipped],
           workers: int | None, progress: bool, verify: bool = False) -> "SliceStore":
    metas: dict[str, dict] = {}
    todo: list[tuple[Case, Path, dict]] = []
    for case in cases:
        try:
            fp = fingerprint(case, config)
        except UADError as exc:  # e.g. a requested modality is missing
            skipped.append(Skipped(case.case_id, str(exc)))
            continue
        case_dir = root / "cases" / case.case_id
        meta = _read_meta(case_dir)
        if meta is not None and meta.get("fingerprint") == fp:
            problem = entry_problem(case_dir, meta, full=verify)
            if problem is None:
                metas[case.case_id] = meta
                continue
            log.warning("%s: damaged cache entry (%s); rebuilding it", case_dir, problem)
        todo.append((case, case_dir, fp))

    for case_id, meta, error in _run_builds(todo, config, workers, progress):
        if meta is not None:
            metas[case_id] = meta
        else:
            skipped.append(Skipped(case_id, error or "unknown error"))

    if not metas:
        reasons = "; ".join(f"{s.case_id}: {s.reason}" for s in skipped[:5])
        raise DataError(data_root, "no usable case found" + (f" ({reasons})" if reasons else ""))
    _remove_stale(root, set(metas))
    manifest = {
        "version": STORE_VERSION,
        "data_root": str(Path(data_root).resolve()),
        "config": config.to_dict(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cases": {cid: metas[cid]["fingerprint"] for cid in sorted(metas)},
        "skipped": [[s.case_id, s.reason] for s in sorted(skipped, key=lambda s: s.case_id)],
    }
    old = _read_meta_file(root / "manifest.json")
    if not (isinstance(old, dict) and {k: v for k, v in old.items() if k != "built"} ==
            fileio.json_safe({k: v for k, v in manifest.items() if k != "built"})):
        fileio.write_json(root / "manifest.json", manifest)  # only when something changed
    return SliceStore(root)


def _run_builds(todo, config, workers, progress):
    if not todo:
        return []
    from tqdm.auto import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    bar = tqdm(total=len(todo), desc="preprocessing cases", unit="case", disable=not progress)
    results = []
    if workers == 1:
        for case, case_dir, fp in todo:
            results.append(_build_one(case, config, case_dir, fp))
            bar.update()
    else:
        with spawn_pool(workers) as pool:
            futures = submit_all(pool, _build_one, [(case, config, case_dir, fp) for case, case_dir, fp in todo])
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    bar.close()
    return results


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Delete cached cases no longer in the dataset and temporary folders of interrupted builds.

    The temporary folders of another live process (``.tmp-<case>-<pid>``: a concurrent build of the same
    entry, or its worker) are its work in progress, not leftovers.
    """
    from uad.core.processes import pid_alive

    for entry in (root / "cases").iterdir():
        if entry.name in keep:
            continue
        pid = entry.name.rsplit("-", 1)[-1]
        if entry.name.startswith((".tmp-", ".old-")) and pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)


class SliceStore:
    """Read side of the cache. Open with ``build_store`` (builds what is missing) or ``SliceStore(path)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        # Held for the store's lifetime: `uad cache prune` and the size limit never remove an open store.
        self._use = cache.use_entry(self.root)
        weakref.finalize(self, self._use.release)
        manifest_path = self.root / "manifest.json"
        try:
            self.manifest = fileio.read_json(manifest_path)
        except FileNotFoundError:
            self._use.release()
            raise DataError(self.root, "slice cache not built (no manifest.json); run `python -m uad prepare`") from None
        except ValueError as exc:
            self._use.release()
            raise DataError(manifest_path, f"corrupt manifest ({exc})") from None
        cache.touch(self.root)
        try:
            self.config = PreprocessConfig.from_dict(self.manifest["config"])
            if not isinstance(self.manifest["cases"], dict) or not isinstance(self.manifest["data_root"], str):
                raise TypeError("cases or data_root of the wrong type")
            self.case_ids: list[str] = list(self.manifest["cases"])
            self.skipped = [Skipped(str(cid), str(reason)) for cid, reason in self.manifest.get("skipped", [])]
        except (KeyError, TypeError, ValueError, UADError) as exc:
            self._use.release()
            raise DataError(manifest_path, f"corrupt manifest ({exc}); rebuild it with `python -m uad prepare`") from None
        self._cases: dict[str, WorkingCase] = {}
        self._verified: set[str] = set()
        self._labelled: dict[str, bool] = {}
        self.table = self._load_table()

    def _load_table(self) -> pd.DataFrame:
        frames = []
        for cid in self.case_ids:
            meta = self._meta(cid)
            self._labelled[cid] = bool(meta["labelled"])
            df = pd.DataFrame(meta["slices"])
            df.insert(0, "case_id", cid)
            df["labelled"] = meta["labelled"]
            df["row"] = np.arange(len(df))  # position inside the case's arrays
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def _meta(self, case_id: str) -> dict:
        case_dir = self.root / "cases" / case_id
        meta = _read_meta(case_dir)
        if meta is None or meta.get("fingerprint") != self.manifest["cases"][case_id]:
            raise DataError(case_dir, "cached case is missing or out of date; rebuild with `python -m uad prepare`")
        return meta

    def release(self, case_id: str) -> None:
        """Drop the store's handle on a case, so its memory-mapped pages leave this process's memory once
        the caller's references go too. A pass over a whole cohort releases each case after use, so memory
        does not grow with the number of cases."""
        self._cases.pop(case_id, None)

    def case(self, case_id: str) -> WorkingCase:
        """The cached case, its arrays memory-mapped (``images`` float16, as stored)."""
        if case_id not in self._cases:
            if case_id not in self.manifest["cases"]:
                raise DataError(self.root, f"case {case_id} is not in this slice cache")
            meta = self._meta(case_id)
            case_dir = self.root / "cases" / case_id
            if case_id not in self._verified:  # every byte, once per case and process
                problem = entry_problem(case_dir, meta, full=True)
                if problem is not None:
                    meta = self._rebuild(case_id, problem)
                self._verified.add(case_id)
            arrays = {}
            for name in ARRAYS:
                try:
                    arrays[name] = np.load(case_dir / f"{name}.npy", mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise DataError(case_dir / f"{name}.npy", f"unreadable cache file ({exc})") from None
            rows = self.table.case_id == case_id
            self._cases[case_id] = WorkingCase(
                case_id, arrays["images"], arrays["tumour"], arrays["brain"],
                self.table.loc[rows, list(SLICE_TABLE_COLUMNS)].reset_index(drop=True),
                SliceGeometry.from_dict(meta["geometry"]), bool(meta["labelled"]),
                [(float(lo), float(hi)) for lo, hi in meta.get("norm", [])],
            )
        return self._cases[case_id]

    def _rebuild(self, case_id: str, problem: str) -> dict:
        """Preprocess a damaged case again from its source files (unchanged since it was cached), in place;
        its new meta. A DataError when that cannot be done (source changed or gone, cache read-only)."""
        case_dir = self.root / "cases" / case_id
        log.warning("%s: damaged cache entry (%s); rebuilding it", case_dir, problem)
        try:
            case = _find_case(self.data_root, case_id)
            fp = fingerprint(case, self.config)
            if fp != self.manifest["cases"][case_id]:
                raise DataError(case_dir, "its source files changed since it was cached")
            meta = _write_case(case, self.config, case_dir, fp)
        except (UADError, OSError) as exc:
            written = fileio.write_error(exc, case_dir) if isinstance(exc, OSError) else None
            raise DataError(case_dir, f"damaged cache entry ({problem}), and it cannot be rebuilt here "
                                      f"({written or exc}); run `python -m uad prepare` on its dataset") from None
        problem = entry_problem(case_dir, meta, full=True)
        if problem is not None:
            raise DataError(case_dir, f"damaged cache entry that stays damaged when rebuilt ({problem})")
        return meta

    def close(self) -> None:
        """Let go of the entry (it may then be pruned); the store stays readable through open memmaps."""
        self._use.release()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_use"] = cache.EntryUse(None)  # a copy in a worker process: the lock stays with the original
        return state

    @property
    def labelled_ids(self) -> list[str]:
        """Ids of the labelled cases, in ``case_ids`` order, from the metadata read at open: unlike
        ``case(c).labelled`` this maps no arrays and re-hashes no files."""
        return [cid for cid in self.case_ids if self._labelled[cid]]

    @property
    def data_root(self) -> Path:
        return Path(self.manifest["data_root"])

    def summary(self) -> dict[str, Any]:
        t = self.table
        labelled = t[t.labelled]
        return {
            "cases": len(self.case_ids),
            "labelled_cases": int(t.groupby("case_id").labelled.first().sum()),
            "skipped": len(self.skipped),
            "slices": len(t),
            "tumour_slices": int(labelled.label.sum()),
            "tumour_slice_fraction": float(labelled.label.mean()) if len(labelled) else float("nan"),
        }


def load_working_case(
    data_root: str | Path,
    case: Case | str,
    config: PreprocessConfig,
    cache_root: str | Path | None = None,
    preprocess=None,
) -> WorkingCase:
    """One case of ``data_root`` at working size: from the slice cache when its entry is up to date, else
    preprocessed now (by ``preprocess(case, config)`` when given, e.g. ``uad.scoring.cache.cached_working_case``,
    which keeps the result; default ``preprocess_case``). The slice cache is never built or written here, so
    scoring one case never waits for a whole cache.

    ``case`` is a discovered ``Case`` or a case id (looked up under ``data_root``). The cache is used only
    when its manifest records this case with the fingerprint its files have now; a missing, stale or
    damaged cache is not the caller's problem, so it falls back to preprocessing. Either way the result
    is in memory with float32 images (``WorkingCase.in_memory``): it outlives a rebuild of the cache.
    """
    if isinstance(case, str):
        case = _find_case(data_root, case)
    case.require(config.modalities)  # a missing modality is the user's to fix: say so, do not fall back
    try:
        sdir = store_dir(data_root, config, cache_root)
        fp = fingerprint(case, config)
        # The manifest alone says whether the case is there up to date: a stale entry costs one JSON read, not
        # the opening of the store (every case's meta.json read into its table: 0.13 s for the 25 demo cases).
        if _manifest_case(sdir, case.case_id) == fp:
            store = SliceStore(sdir)
            if store.manifest["cases"].get(case.case_id) == fp:
                return store.case(case.case_id).in_memory()
    except UADError:
        pass
    return (preprocess or preprocess_case)(case, config)


def _manifest_case(sdir: Path, case_id: str) -> Any:
    """The fingerprint a store's manifest records for ``case_id``; None when there is no readable manifest or no such case."""
    try:
        cases = fileio.read_json(sdir / "manifest.json").get("cases")
    except (OSError, ValueError, AttributeError):
        return None
    return cases.get(case_id) if isinstance(cases, dict) else None


def _find_case(data_root: str | Path, case_id: str) -> Case:
    cases, skipped = discover_cases(data_root)
    found = next((c for c in cases if c.case_id == case_id), None)
    if found is not None:
        return found
    reason = next((s.reason for s in skipped if s.case_id == case_id), None)
    raise DataError(data_root, f"case {case_id} " + (f"cannot be used: {reason}" if reason else "is not in this folder"))
