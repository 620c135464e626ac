"""Volumes ready to be drawn: each modality in the file's own values, cropped to the brain, with its default
display window (percentiles over the brain), where the crosshair starts, per-slice label counts, and where
each drawn voxel lies in the source file and in the scanner. The app's viewer draws these; nothing here
depends on a browser.

Display orientation follows ``uad.data.preprocess.display_stack``: (Z, Y, X) = inferior → superior,
anterior → posterior, the patient's left → right.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DISPLAY_PERCENTILES = (0.5, 99.5)  # default display window over brain voxels (not the models' normalisation)
CROP_MARGIN = 6  # voxels kept around the brain's bounding box
UNIT_CODES = 65535  # images in [0, 1] travel as uint16 codes: value = code / UNIT_CODES (1.5e-5 steps)


# -- display windows ---------------------------------------------------------------------------------------------
def display_window(volume: np.ndarray, brain: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES) -> tuple[float, float]:
    """The default display window (low, high) of a volume, in its own units: the brain's intensity percentiles.

    Percentiles over brain voxels only, so the zero background (80 % of a BraTS grid) and a few negative
    interpolation values at the brain's edge neither shrink the contrast nor turn the background grey.
    """
    inside = volume[brain]
    if inside.size == 0:
        return 0.0, 1.0
    sample = inside[:: max(1, inside.size // 400_000)]  # a subsample is plenty for a display percentile
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def window_bytes(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Grey levels 0…255 of ``values`` under ``window`` (low → black, high → white): the arithmetic the viewer
    does in the browser for every window/level, written here as its reference."""
    lo, hi = window
    return np.clip((np.asarray(values, np.float64) - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)


def bounding_box(mask: np.ndarray, margin: int = CROP_MARGIN) -> tuple[slice, ...]:
    """Slices of ``mask``'s bounding box on every axis, ``margin`` voxels wider (clipped to the array)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for axis, n in enumerate(mask.shape):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, n)))
    return tuple(out)


def unit_codes(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (uad's normalised inputs and reconstructions) → uint16 codes, value = code / UNIT_CODES."""
    return (np.clip(np.asarray(images, np.float32), 0, 1) * UNIT_CODES).round().astype(np.uint16)


def file_values(volume: np.ndarray) -> np.ndarray:
    """A volume's values as they travel to the viewer: int16 when that holds them exactly (BraTS intensities
    are integers), else float32. Either way the viewer shows the file's own value, not a display byte."""
    v16 = volume.astype(np.int16)
    return v16 if np.array_equal(v16, volume) else np.asarray(volume, np.float32)


# -- where the crosshair starts, label counts ---------------------------------------------------------------------
def start_position(shape, mask: np.ndarray | None, z: int | None = None) -> list[int]:
    """Where a (Z, Y, X) viewer opens: on axial slice ``z`` (default: the one with the most ``mask`` voxels), at
    the median of that slice's ``mask`` voxels; the grid's centre where there are none."""
    centre = [int(s) // 2 for s in shape]
    if mask is None or not np.any(mask):
        return centre if z is None else [int(z), *centre[1:]]
    mask = np.asarray(mask, bool)
    if z is None:
        z = int(np.argmax(mask.sum(axis=(1, 2))))
    ys, xs = np.nonzero(mask[z])
    return [int(z), int(np.median(ys)), int(np.median(xs))] if ys.size else [int(z), *centre[1:]]


def label_counts(labels: np.ndarray, present: list[int] | None = None) -> dict[str, list[int]]:
    """Voxels per axial slice of a (Z, Y, X) label volume: ``"whole"`` (every label > 0) and each label present."""
    out = {"whole": (labels > 0).sum(axis=(1, 2)).tolist()}
    for v in present if present is not None else sorted(int(v) for v in np.unique(labels) if v):
        out[str(v)] = (labels == v).sum(axis=(1, 2)).tolist()
    return out


# -- where a drawn voxel lies ---------------------------------------------------------------------------------------
def display_to_source(source_shape, ornt: np.ndarray, canonical_shape) -> np.ndarray:
    """4×4 matrix: (z, y, x, 1) of a display stack (``display_stack`` of the RAS+ volume) → (i, j, k, 1), the
    voxel index in the source file (fractional positions map linearly, for resampled grids)."""
    X, Y, Z = canonical_shape
    # display (z, y, x) → canonical RAS+ (cx, cy, cz) = (x, Y - 1 - y, z)
    to_canonical = np.array([[0, 0, 1, 0], [0, -1, 0, Y - 1], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    # canonical → source: source axis a holds canonical axis ornt[a, 0], reversed when ornt[a, 1] is -1
    to_source = np.zeros((4, 4))
    to_source[3, 3] = 1
    for a, (t, flip) in enumerate(np.asarray(ornt)):
        if flip > 0:
            to_source[a, int(t)] = 1
        else:
            to_source[a, int(t)], to_source[a, 3] = -1, source_shape[a] - 1
    return to_source @ to_canonical


def shifted(matrix: np.ndarray, offset) -> np.ndarray:
    """``matrix`` applied after moving (z, y, x) by ``offset``: the mapping of a cropped grid."""
    move = np.eye(4)
    move[:3, 3] = offset
    return matrix @ move


# -- a case ready for the Data page -----------------------------------------------------------------------------
@dataclasses.dataclass
class DisplayCase:
    """A case ready for the viewer: every readable modality in its file's own values, cropped to the brain."""

    case_id: str
    source: str  # the case's folder: the viewer shows which files it draws
    mods: dict[str, np.ndarray]  # (Z, Y, X) the files' own values (``file_values``: int16 or float32)
    labels: np.ndarray | None  # (Z, Y, X) uint8 label values, None when unlabelled or unreadable
    spacing: tuple[float, float, float]  # mm along (Z, Y, X)
    slice_labels: list[int]  # index in the source file of each Z
    errors: dict[str, str]  # modality → why it could not be read
    seg_error: str | None  # why the segmentation could not be read (names the file)
    crop: tuple[slice, ...] | None = None
    windows: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # default window per modality
    to_voxel: np.ndarray | None = None  # 4×4: (z, y, x, 1) of this grid → (i, j, k, 1) in the source files
    affine: np.ndarray | None = None  # the source files' affine: voxel index → scanner position (mm, RAS)
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # modality (and "seg") → file name

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.mods.values())).shape

    @functools.cached_property
    def present(self) -> list[int]:
        # bincount, not np.unique: the labels are uint8, and counting is 3× faster than unique's hashing (~25 vs 75 ms)
        return [] if self.labels is None else [int(v) for v in np.flatnonzero(np.bincount(self.labels.ravel())) if v]

    @property
    def start(self) -> list[int]:
        """Where the crosshair starts: the slice with the most tumour and the median of its tumour voxels, else
        the middle of the grid."""
        return start_position(self.shape, None if self.labels is None else self.labels > 0) if self.mods else [0, 0, 0]

    @functools.cached_property
    def counts(self) -> dict[str, list[int]]:
        """Voxels per axial slice: ``"whole"`` tumour and each label present (``label_counts``)."""
        return {} if self.labels is None else label_counts(self.labels, self.present)


def _display_crop(canonical: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """``display_stack(canonical)[box]``, copying only the cropped voxels."""
    return np.ascontiguousarray(canonical.transpose(2, 1, 0)[:, ::-1, :][box])


def _read_all(case) -> tuple[dict, dict[str, str], object, str | None]:
    """Every modality of ``case`` and its segmentation, each file read once, in parallel threads (reading a
    .nii.gz is mostly zlib and numpy work, which releases the GIL). Each file costs only itself when it fails.

    Returns ({modality: CaseVolumes}, {modality: error}, the labelled CaseVolumes or None, seg error)."""
    from uad.core.errors import UADError
    from uad.data.cases import MODALITIES
    from uad.data.volumes import load_case

    mods = [m for m in MODALITIES if m in case.modalities]

    def one(mod: str, seg: bool):
        sub = dataclasses.replace(case, modalities={mod: case.modalities[mod]}, seg=case.seg if seg else None)
        try:
            return load_case(sub, (mod,)), None
        except UADError as exc:
            return None, str(exc)
        except MemoryError:
            return None, f"{case.modalities[mod]}: not enough memory to load this volume"

    # The first modality is read together with the segmentation (the segmentation's grid is checked against it).
    with ThreadPoolExecutor(max_workers=max(1, min(len(mods), os.cpu_count() or 1, 4))) as pool:
        futures = {m: pool.submit(one, m, i == 0 and case.seg is not None) for i, m in enumerate(mods)}
        got = {m: f.result() for m, f in futures.items()}
    vols = {m: v for m, (v, _) in got.items() if v is not None}
    errors = {m: e for m, (_, e) in got.items() if e is not None}
    labelled, seg_error = None, None
    if case.seg is not None and mods:
        first = mods[0]
        if first in vols:
            labelled = vols[first]
        else:  # the first modality or the segmentation failed: find out which, and read the segmentation against another
            alone = one(first, False)
            if alone[0] is not None:
                vols[first], seg_error = alone[0], errors.pop(first)
            ref = next((m for m in mods if m in vols), None)
            if ref is not None and seg_error is None:
                labelled, seg_error = one(ref, True)
    return vols, errors, labelled, seg_error


def load_display_case(case) -> DisplayCase:
    """Read every modality of ``case`` (a ``uad.data.cases.Case``) and its segmentation for display.

    Each file is read once and on its own, so one unreadable file costs only itself (reported, not raised).
    The brain mask is uad's (``brain_mask``: non-zero in any channel, largest part, holes filled).
    """
    from uad.data.preprocess import brain_mask, canonical_spacing

    vols, errors, labelled, seg_error = _read_all(case)
    out = DisplayCase(case.case_id, str(Path(next(iter(case.modalities.values()))).parent) if case.modalities else "",
                      {}, None, (1.0, 1.0, 1.0), [], {}, seg_error)
    raw: dict[str, np.ndarray] = {}
    first = None
    for mod, v in vols.items():  # in MODALITIES order
        if first is not None and v.images.shape[1:] != first.images.shape[1:]:
            errors[mod] = (f"{case.modalities[mod]}: shape {v.images.shape[1:]} differs from "
                           f"{case.modalities[next(iter(raw))].name} {first.images.shape[1:]}")
            continue
        first = first or v
        raw[mod] = v.images[0]
    out.errors = {m: errors[m] for m in case.modalities if m in errors}
    if first is None:
        return out
    if labelled is not None and labelled.labels is not None and labelled.images.shape[1:] != first.images.shape[1:]:
        out.seg_error, labelled = f"{case.seg}: shape differs from {case.modalities[next(iter(raw))].name}", None
    # uad's brain mask reads only which voxels are non-zero in any channel: one boolean channel holds that,
    # without stacking four float volumes (a 140 MB copy for a BraTS case).
    nonzero = np.zeros(first.images.shape[1:], bool)
    for volume in raw.values():
        nonzero |= volume != 0
    # The box is found on the RAS+ mask and carried to display axes ((z, y, x) = (cz, Y - 1 - cy, cx)): only the
    # cropped voxels are ever reordered for display (the whole-volume reordering cost ~45 ms a case).
    canonical_brain = brain_mask(nonzero[None])
    cx, cy, cz = bounding_box(canonical_brain)
    height = canonical_brain.shape[1]
    box = (cz, slice(height - cy.stop, height - cy.start), cx)
    out.crop = box
    brain = _display_crop(canonical_brain, box)

    def prepare(volume: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        values = file_values(_display_crop(volume, box))
        return values, display_window(values, brain)

    with ThreadPoolExecutor(max_workers=max(1, min(len(raw), os.cpu_count() or 1, 4))) as pool:  # numpy releases the GIL
        for mod, (values, window) in zip(raw, pool.map(prepare, raw.values())):
            out.mods[mod], out.windows[mod] = values, window
            out.files[mod] = Path(case.modalities[mod]).name
    if labelled is not None and labelled.labels is not None:
        out.labels = _display_crop(labelled.labels, box).astype(np.uint8, copy=False)
        out.files["seg"] = Path(case.seg).name
    sx, sy, sz = canonical_spacing(first.affine, first.ornt)
    out.spacing = (sz, sy, sx)
    out.slice_labels = [int(first.source_axial_index(k)) for k in range(box[0].start, box[0].stop)]
    _ = out.counts  # computed once, kept with the case (the page reads them on every run)
    out.to_voxel = shifted(display_to_source(first.shape, first.ornt, first.images.shape[1:]), [s.start for s in box])
    out.affine = np.asarray(first.affine, float)
    return out
