"""The slice cache as a whole: its entries, their size and last use, and removing the least recently used.

An entry is one dataset + preprocessing config, ``<cache>/<dataset-name>-<8 hex>/<12 hex config key>/``
(see ``uad.data.store``). Besides what the store writes, each entry holds

    last_used     the time (Unix seconds) it was last built or opened, written atomically. A file of its
                  own because the manifest's mtime only changes on a rebuild, and mtimes do not survive
                  a copy of the cache.
    .lock         held with a shared flock by every process building or reading the entry. Removal takes
                  it exclusively without waiting, so an entry in use is never removed, and renames the
                  entry aside while holding it, so a builder that was waiting for the lock sees the
                  entry gone and starts a fresh one instead of writing into a folder being deleted.

Only folders whose names have that shape, directly under the cache root, are ever listed or removed.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from uad.core import fileio, paths
from uad.core.errors import ConfigError, DataError

try:
    import fcntl
except ImportError:  # Windows: no shared locks; see _in_use
    fcntl = None

log = logging.getLogger("uad.data.cache")

LAST_USED = "last_used"
LOCK = ".lock"
MAX_BYTES_ENV = "UAD_CACHE_MAX_BYTES"
REMOVING_TAG = ".removing-"  # <dataset folder>/.removing-<key>-<pid>: an entry being deleted by <pid>
RECENT_S = 3600.0  # without flock, an entry used this recently counts as in use
_DATASET_RE = re.compile(r".+-[0-9a-f]{8}")
_KEY_RE = re.compile(r"[0-9a-f]{12}")


# -- using an entry -----------------------------------------------------------------------------------------
class EntryUse:
    """A shared lock on an entry, held while building or reading it. ``release`` (or exit) drops it."""

    def __init__(self, fd: int | None):
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def use_entry(entry: Path, create: bool = False) -> EntryUse:
    """Hold ``entry`` so it is not removed meanwhile; ``create`` makes the folder (a builder).

    Waits only while a remover holds the entry, which takes milliseconds (it renames the folder, then
    lets go). A reader whose entry was removed meanwhile gets an empty hold, and then the store's usual
    "not built" error; a read-only cache gets an empty hold too (nobody can remove from it either).
    """
    entry = Path(entry)
    if fcntl is None:
        return EntryUse(None)
    for _ in range(100):
        if create:
            try:
                (entry / "cases").mkdir(parents=True, exist_ok=True)
            except FileNotFoundError:  # a remover took away the dataset folder as we made it
                continue
        fd = _open_lock(entry, create=True)
        if fd is None:
            if create and not entry.exists():
                continue  # removed between mkdir and open: make it again
            return EntryUse(None)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if _same_file(fd, entry / LOCK):
            return EntryUse(fd)
        os.close(fd)  # we waited on an entry that was removed meanwhile
        if not create:
            return EntryUse(None)
    raise DataError(entry, "cannot lock this cache entry (removed again and again while opening it)")


def touch(entry: Path) -> None:
    """Record that ``entry`` was used now. A read-only or full cache is no reason to fail a read."""
    try:
        fileio.write_text(Path(entry) / LAST_USED, f"{time.time():.3f}\n")
    except Exception as exc:  # noqa: BLE001 - OSError, or the DiskFullError fileio turns ENOSPC into
        log.debug("%s: cannot record last use (%s)", entry, exc)


def _open_lock(entry: Path, create: bool) -> int | None:
    path = entry / LOCK
    for flags in ((os.O_RDWR | os.O_CREAT) if create else os.O_RDWR, os.O_RDONLY):
        try:
            return os.open(path, flags, 0o666)
        except OSError:
            continue
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# -- listing ----------------------------------------------------------------------------------------------
@dataclass
class CacheEntry:
    path: Path
    dataset: str | None  # the dataset folder, from the manifest (None: no readable manifest)
    modalities: tuple[str, ...] | None
    image_size: int | None
    cases: int
    size: int  # bytes on disk
    last_used: float  # Unix time
    in_use: bool

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def complete(self) -> bool:
        return self.dataset is not None

    @property
    def config(self) -> str:
        if self.modalities is None:
            return "?"
        return f"{'+'.join(self.modalities)} {self.image_size}px"


def entries(cache_root: str | Path | None = None) -> list[CacheEntry]:
    """Every entry under the cache root, least recently used first."""
    root = Path(cache_root or paths.cache_dir())
    found = []
    for entry in _entry_dirs(root):
        manifest = _read_manifest(entry)
        config = manifest.get("config", {}) if manifest else {}
        if manifest and isinstance(manifest.get("cases"), dict):
            n_cases = len(manifest["cases"])
        else:  # never finished a first build: count the cases written so far
            n_cases = sum(1 for c in _listdir(entry / "cases") if not c.name.startswith("."))
        modalities = config.get("modalities")
        found.append(CacheEntry(
            path=entry,
            dataset=manifest.get("data_root") if manifest else None,
            modalities=tuple(modalities) if isinstance(modalities, list) else None,
            image_size=config.get("image_size"),
            cases=n_cases,
            size=disk_usage(entry),
            last_used=last_used(entry),
            in_use=_in_use(entry),
        ))
    return sorted(found, key=lambda e: (e.last_used, e.name))


def _entry_dirs(root: Path) -> list[Path]:
    out = []
    for dataset in _listdir(root):
        if not _DATASET_RE.fullmatch(dataset.name) or dataset.is_symlink() or not dataset.is_dir():
            continue
        for entry in _listdir(dataset):
            if _KEY_RE.fullmatch(entry.name) and not entry.is_symlink() and entry.is_dir():
                out.append(entry)
    return out


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _read_manifest(entry: Path) -> dict | None:
    try:
        manifest = fileio.read_json(entry / "manifest.json")
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def last_used(entry: Path) -> float:
    """When ``entry`` was last built or opened; entries from before ``last_used`` existed: the manifest's
    time (or the folder's, for a build that never finished)."""
    try:
        return float((entry / LAST_USED).read_text().strip())
    except (OSError, ValueError):
        pass
    for path in (entry / "manifest.json", entry):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def disk_usage(folder: Path) -> int:
    """Bytes ``folder`` takes on disk (allocated blocks where the OS reports them, as ``du`` counts)."""
    total, stack = 0, [str(folder)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for item in it:
                try:
                    st = item.stat(follow_symlinks=False)
                    if item.is_dir(follow_symlinks=False):
                        stack.append(item.path)
                except OSError:
                    continue
                blocks = getattr(st, "st_blocks", None)
                total += blocks * 512 if blocks is not None else st.st_size
    return total


def _in_use(entry: Path) -> bool:
    """Whether a process holds ``entry`` (is building or reading it) right now."""
    if fcntl is None:
        return time.time() - last_used(entry) < RECENT_S
    try:
        fd = os.open(entry / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False  # every user creates the lock before using the entry
    except OSError:
        return True  # cannot tell: assume the worst
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it


# -- removing ---------------------------------------------------------------------------------------------
def remove_entry(entry: Path, cache_root: str | Path | None = None) -> bool:
    """Delete ``entry`` unless a process holds it; True if it was removed."""
    root = Path(cache_root or paths.cache_dir()).resolve()
    entry = Path(entry)
    if entry.resolve() not in [e.resolve() for e in _entry_dirs(root)]:
        raise ConfigError(f"{entry}: not an entry of the slice cache {root}; refusing to remove it")
    fd = None
    if fcntl is None:
        if _in_use(entry):
            return False
    else:
        fd = _open_lock(entry, create=True)
        if fd is None:
            return False  # cannot lock it, so cannot know nobody uses it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        if not _same_file(fd, entry / LOCK):  # another remover got there first
            os.close(fd)
            return False
    trash = entry.parent / f"{REMOVING_TAG}{entry.name}-{os.getpid()}"
    try:
        os.replace(entry, trash)  # while locked, so no builder is inside it or starts using it
    finally:
        if fd is not None:
            os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    try:
        entry.parent.rmdir()  # the dataset's folder, once its last entry is gone
    except OSError:
        pass
    return True


def _remove_leftovers(root: Path) -> None:
    """Delete what removers killed mid-delete left behind (their pid is in the name)."""
    from uad.core.processes import pid_alive

    for dataset in _listdir(root):
        if not _DATASET_RE.fullmatch(dataset.name) or dataset.is_symlink():
            continue
        for item in _listdir(dataset):
            m = re.fullmatch(re.escape(REMOVING_TAG) + r"[0-9a-f]{12}-(\d+)", item.name)
            if m and not item.is_symlink() and not pid_alive(int(m.group(1))):
                shutil.rmtree(item, ignore_errors=True)


@dataclass
class PruneReport:
    removed: list[CacheEntry] = field(default_factory=list)
    in_use: list[CacheEntry] = field(default_factory=list)  # chosen, but a process holds them: kept
    total_before: int = 0
    total_after: int = 0


def prune(
    cache_root: str | Path | None = None,
    older_than_days: float | None = None,
    max_bytes: int | None = None,
    dry_run: bool = False,
    keep: tuple[str | Path, ...] = (),
) -> PruneReport:
    """Remove entries unused for ``older_than_days``, then least recently used ones until the cache
    takes at most ``max_bytes``. Entries in ``keep`` or held by a process stay. ``dry_run`` removes nothing."""
    root = Path(cache_root or paths.cache_dir())
    if not dry_run:
        _remove_leftovers(root)
    found = entries(root)
    keep_set = {Path(k).resolve() for k in keep}
    report = PruneReport(total_before=sum(e.size for e in found))
    total = report.total_before
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    for entry in found:  # least recently used first
        old = cutoff is not None and entry.last_used < cutoff
        over = max_bytes is not None and total > max_bytes
        if not (old or over) or entry.path.resolve() in keep_set:
            continue
        if entry.in_use or not (dry_run or remove_entry(entry.path, root)):
            report.in_use.append(entry)
            continue
        report.removed.append(entry)
        total -= entry.size
    report.total_after = total
    return report


def enforce_limit(max_bytes: int, cache_root: str | Path | None = None, keep: tuple[str | Path, ...] = ()) -> PruneReport:
    """After a build: evict least recently used entries other than ``keep`` until under ``max_bytes``."""
    report = prune(cache_root, max_bytes=max_bytes, keep=keep)
    for entry in report.removed:
        log.warning("slice cache over %s: removed %s (%s, %s, %d cases, %s, last used %s)",
                    format_size(max_bytes), entry.path, entry.dataset or "incomplete build", entry.config,
                    entry.cases, format_size(entry.size), format_time(entry.last_used))
    if report.total_after > max_bytes:
        busy = f"; in use: {', '.join(e.name for e in report.in_use)}" if report.in_use else ""
        log.warning("slice cache %s still takes %s, over its limit of %s%s",
                    Path(cache_root or paths.cache_dir()), format_size(report.total_after), format_size(max_bytes), busy)
    return report


# -- sizes and times --------------------------------------------------------------------------------------
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(text: str | int) -> int:
    """``500MB``, ``2GB``, ``1.5G``, ``3GiB``, or plain bytes → bytes (k/M/G/T = powers of 1000, KiB... of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*", str(text), re.IGNORECASE)
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"{text!r} is not a size: use bytes or e.g. 500MB, 2GB, 1.5GiB")
    unit = m.group(2).lower()
    scale = 1024 ** list(_UNITS).index(unit) if m.group(3) else _UNITS[unit]
    value = float(m.group(1)) * scale
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a size")
    return int(value)


def max_bytes_from_env() -> int | None:
    """``$UAD_CACHE_MAX_BYTES`` as bytes (None when unset or empty); a ConfigError when it is not a size."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"{MAX_BYTES_ENV}={text}: {exc}") from None


def format_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


def format_table(found: list[CacheEntry]) -> str:
    """The entries as a text table, most recently used first."""
    rows = [("last used", "size", "cases", "config", "entry", "dataset")]
    for e in sorted(found, key=lambda e: -e.last_used):
        dataset = e.dataset or "(incomplete build)"
        if e.in_use:
            dataset += "  [in use]"
        rows.append((format_time(e.last_used), format_size(e.size), str(e.cases), e.config, e.name, dataset))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {1, 2}  # numbers line up on the right
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    return "\n".join(lines)
