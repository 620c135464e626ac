"""The slice store: each case preprocessed once into an on-disk cache, read back memory-mapped.

Layout (one folder per dataset and preprocessing config)::

    <cache>/<dataset-name>-<hash of its path>/<config key>/
        manifest.json                 written last, atomically: config, cases, skipped cases
        cases/<case_id>/meta.json     per-slice table, geometry, source fingerprint
        cases/<case_id>/images.npy    (S, C, H, W) float16 in [0, 1]
        cases/<case_id>/tumour.npy    (S, H, W) bool, whole tumour at working size
        cases/<case_id>/brain.npy     (S, H, W) bool

A case folder is built under a temporary name and renamed into place when complete, and a case is
reused only if its recorded fingerprint (path, size, mtime of each source file + config) still matches,
so an interrupted build never leaves a cache that reads as valid. Changing the config selects another
folder; changing one case's files rebuilds only that case.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uad import fileio, paths
from uad.data.cases import Case, Skipped, discover_cases
from uad.data.preprocess import PreprocessConfig, SliceGeometry, preprocess_case
from uad.errors import DataError, UADError
from uad.workers import spawn_pool, submit_all

STORE_VERSION = 1
SLICE_COLUMNS = ["case_id", "slice_index", "label", "tumour_pixels", "brain_pixels"]


def fingerprint(case: Case, config: PreprocessConfig) -> dict[str, Any]:
    """What a cached case depends on: its source files (path, size, mtime) and the config."""
    files = []
    for path in case.files(config.modalities):
        st = path.stat()
        files.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return {"version": STORE_VERSION, "config": config.key(), "files": files}


def store_dir(data_root: str | Path, config: PreprocessConfig, cache_root: str | Path | None = None) -> Path:
    root = Path(data_root).resolve()
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    return Path(cache_root or paths.cache_dir()) / f"{root.name}-{tag}" / config.key()


def _write_case(case: Case, config: PreprocessConfig, case_dir: Path, fp: dict) -> dict:
    """Preprocess one case into ``case_dir`` atomically; returns its meta. Runs in a worker process."""
    pre = preprocess_case(case, config)
    tmp = case_dir.parent / f".tmp-{case_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "images.npy", pre.images.astype(np.float16))
        np.save(tmp / "tumour.npy", pre.tumour)
        np.save(tmp / "brain.npy", pre.brain)
        meta = {
            "case_id": case.case_id,
            "fingerprint": fp,
            "labelled": pre.labelled,
            "slices": {
                "slice_index": pre.slice_index.tolist(),
                "label": pre.label.tolist(),
                "tumour_pixels": pre.tumour_pixels.tolist(),
                "brain_pixels": pre.brain_pixels.tolist(),
            },
            "geometry": pre.geometry.to_dict(),
            "norm": [list(n) for n in pre.norm],
        }
        fileio.write_json(tmp / "meta.json", meta)
        # Swap in: the old folder (if any) is moved aside first, so a crash leaves either old or new.
        trash = case_dir.parent / f".old-{case_dir.name}-{os.getpid()}"
        if case_dir.exists():
            os.replace(case_dir, trash)
        os.replace(tmp, case_dir)
        shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _build_one(case: Case, config: PreprocessConfig, case_dir: Path, fp: dict) -> tuple[str, dict | None, str | None]:
    """One case → (id, meta, None), or (id, None, reason) when this case cannot be used.

    Whatever goes wrong with one case's data skips that case; a full disk stops the build (every case
    after it would fail the same way) with a DataError naming the cache folder.
    """
    from uad.errors import DiskFullError

    try:
        return case.case_id, _write_case(case, config, case_dir, fp), None
    except DiskFullError:
        raise
    except UADError as exc:
        return case.case_id, None, str(exc)
    except MemoryError:
        return case.case_id, None, "out of memory while preprocessing"
    except OSError as exc:
        full = fileio.disk_full_error(exc, case_dir)
        if full is not None:
            raise full from None
        return case.case_id, None, f"{case.folder}: cannot be read or cached ({exc})"
    except Exception as exc:  # noqa: BLE001 - a bug or an exotic file must not stop the other cases
        return case.case_id, None, f"{case.folder}: cannot be preprocessed ({type(exc).__name__}: {exc})"


def _read_meta(case_dir: Path) -> dict | None:
    try:
        return fileio.read_json(case_dir / "meta.json")
    except (OSError, ValueError):
        return None


def build_store(
    data_root: str | Path,
    config: PreprocessConfig = PreprocessConfig(),
    cache_root: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> "SliceStore":
    """Preprocess every usable case under ``data_root`` (reusing up-to-date cached cases) and open the store.

    Cases that cannot be used are skipped and reported in ``store.skipped`` with the reason.
    """
    cases, skipped = discover_cases(data_root)
    root = store_dir(data_root, config, cache_root)
    (root / "cases").mkdir(parents=True, exist_ok=True)

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
        if meta is not None and meta.get("fingerprint") == fp and _arrays_present(case_dir):
            metas[case.case_id] = meta
        else:
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
    fileio.write_json(root / "manifest.json", manifest)
    return SliceStore(root)


def _arrays_present(case_dir: Path) -> bool:
    return all((case_dir / f"{n}.npy").is_file() for n in ("images", "tumour", "brain"))


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
    """Delete cached cases no longer in the dataset and temporary folders of interrupted builds."""
    for entry in (root / "cases").iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


@dataclass
class CaseSlices:
    """One cached case: memory-mapped arrays plus its per-slice table and geometry."""

    case_id: str
    images: np.ndarray  # (S, C, H, W) float16, memory-mapped
    tumour: np.ndarray  # (S, H, W) bool, memory-mapped
    brain: np.ndarray  # (S, H, W) bool, memory-mapped
    table: pd.DataFrame
    geometry: SliceGeometry
    labelled: bool


class SliceStore:
    """Read side of the cache. Open with ``build_store`` (builds what is missing) or ``SliceStore(path)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        try:
            self.manifest = fileio.read_json(manifest_path)
        except FileNotFoundError:
            raise DataError(self.root, "slice cache not built (no manifest.json); run `python -m uad prepare`") from None
        except ValueError as exc:
            raise DataError(manifest_path, f"corrupt manifest ({exc})") from None
        self.config = PreprocessConfig.from_dict(self.manifest["config"])
        self.case_ids: list[str] = list(self.manifest["cases"])
        self.skipped = [Skipped(cid, reason) for cid, reason in self.manifest.get("skipped", [])]
        self._cases: dict[str, CaseSlices] = {}
        self.table = self._load_table()

    def _load_table(self) -> pd.DataFrame:
        frames = []
        for cid in self.case_ids:
            meta = self._meta(cid)
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

    def case(self, case_id: str) -> CaseSlices:
        if case_id not in self._cases:
            if case_id not in self.manifest["cases"]:
                raise DataError(self.root, f"case {case_id} is not in this slice cache")
            meta = self._meta(case_id)
            case_dir = self.root / "cases" / case_id
            arrays = {}
            for name in ("images", "tumour", "brain"):
                try:
                    arrays[name] = np.load(case_dir / f"{name}.npy", mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise DataError(case_dir / f"{name}.npy", f"unreadable cache file ({exc})") from None
            self._cases[case_id] = CaseSlices(
                case_id, arrays["images"], arrays["tumour"], arrays["brain"],
                self.table[self.table.case_id == case_id].reset_index(drop=True),
                SliceGeometry.from_dict(meta["geometry"]), bool(meta["labelled"]),
            )
        return self._cases[case_id]

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
