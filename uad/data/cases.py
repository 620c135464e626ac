"""Case discovery: find BraTS-style cases under a folder.

Recognised names (``.nii`` or ``.nii.gz``), cases directly under the root or one folder deeper:

* BraTS 2021: ``<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz``
* BraTS 2023: ``<id>/<id>-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (t2f = FLAIR, t1n = T1, t1c = T1ce, t2w = T2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from uad.core.errors import DataError

MODALITIES = ("flair", "t1", "t1ce", "t2")

# File-name suffix → canonical modality. Longer names first so "t1ce" is not read as "t1".
_SUFFIXES = {
    "flair": "flair", "t1ce": "t1ce", "t1": "t1", "t2": "t2",
    "t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2",
    "seg": "seg",
}
_FILE_RE = re.compile(
    r"^(?P<prefix>.+?)[_-](?P<suffix>" + "|".join(sorted(_SUFFIXES, key=len, reverse=True)) + r")\.nii(?:\.gz)?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Case:
    """One patient: its id, the file of each modality present, and its segmentation (None if unlabelled)."""

    case_id: str
    folder: Path
    modalities: dict[str, Path] = field(hash=False)
    seg: Path | None = None

    @property
    def labelled(self) -> bool:
        return self.seg is not None

    def require(self, modalities: tuple[str, ...] | list[str]) -> None:
        """Raise a DataError naming the case and what is missing."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            have = ", ".join(sorted(self.modalities)) or "none"
            raise DataError(self.folder, f"missing modality {', '.join(missing)} (case has: {have})")

    def files(self, modalities: tuple[str, ...] | list[str]) -> list[Path]:
        """Paths of the requested modalities, then the seg if present."""
        self.require(modalities)
        paths = [self.modalities[m] for m in modalities]
        return paths + ([self.seg] if self.seg is not None else [])


@dataclass(frozen=True)
class Skipped:
    """A case (or folder) left out of a scan, and why."""

    case_id: str
    reason: str


def check_modalities(modalities: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    from uad.core.errors import ConfigError

    mods = tuple(m.lower() for m in modalities)
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise ConfigError(f"unknown modality {', '.join(bad) or '(none)'}; choose from {', '.join(MODALITIES)}")
    if len(set(mods)) != len(mods):
        raise ConfigError(f"modality listed twice: {' '.join(mods)}")
    return mods


def _case_from_folder(folder: Path) -> Case | Skipped | None:
    """A Case if the folder holds recognisable NIfTI files, a Skipped if they are ambiguous, else None."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = _FILE_RE.match(path.name)
        if not match or not path.is_file():
            continue
        kind = _SUFFIXES[match["suffix"].lower()]
        if kind in found:
            # e.g. both a .nii and a .nii.gz, or two naming schemes in one folder
            return Skipped(folder.name, f"two files for {kind}: {found[kind].name} and {path.name}")
        found[kind] = path
    if not found:
        return None
    seg = found.pop("seg", None)
    if not found:
        return Skipped(folder.name, "has a segmentation but no image modality")
    return Case(case_id=folder.name, folder=folder, modalities=found, seg=seg)


def _subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders; an entry that cannot even be stat'ed is left out (it cannot be a readable case)."""
    subs = []
    for p in folder.iterdir():
        try:
            if p.is_dir() and not p.name.startswith("."):
                subs.append(p)
        except OSError:
            continue
    return sorted(subs)


def discover_cases(root: str | Path) -> tuple[list[Case], list[Skipped]]:
    """Find cases under ``root`` (directly or one level deeper), sorted by id.

    Returns the cases and the folders that looked like cases but could not be used.
    Raises DataError if ``root`` is not a readable folder.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise DataError(root, "is not a folder")
    cases: dict[str, Case] = {}
    skipped: list[Skipped] = []

    def visit(folder: Path, depth: int) -> None:
        try:
            result = _case_from_folder(folder)
            subs = _subfolders(folder) if result is None and depth < 2 else []
        except OSError as exc:
            if folder == root:
                raise
            # One unreadable folder (permissions, a broken mount) is one skipped case, not a failed dataset.
            skipped.append(Skipped(folder.name, f"cannot read folder {folder} ({exc.strerror or exc})"))
            return
        if isinstance(result, Skipped):
            skipped.append(result)
        elif isinstance(result, Case):
            if result.case_id in cases:
                skipped.append(Skipped(result.case_id, f"duplicate case id (also in {cases[result.case_id].folder})"))
            else:
                cases[result.case_id] = result
        else:
            for sub in subs:
                visit(sub, depth + 1)

    try:
        visit(root, 0)
    except PermissionError as exc:
        raise DataError(exc.filename or root, "permission denied") from None
    except OSError as exc:
        raise DataError(exc.filename or root, f"cannot read the dataset folder ({exc.strerror or exc})") from None
    return [cases[k] for k in sorted(cases)], skipped
