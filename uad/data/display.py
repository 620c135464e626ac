"""Volumes ready to be drawn: each modality windowed to bytes over the brain, cropped to it, maps quantised to a
fixed colour scale. The app's viewer draws these; nothing here depends on a browser.

Display orientation follows ``uad.data.preprocess.display_stack``: (Z, Y, X) = inferior → superior,
anterior → posterior, the patient's left → right.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

DISPLAY_PERCENTILES = (0.5, 99.5)  # display window over brain voxels (not the models' normalisation)
CROP_MARGIN = 6  # voxels kept around the brain's bounding box


def window_to_uint8(volume: np.ndarray, brain: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES) -> np.ndarray:
    """Display bytes: the brain's [low, high] intensity percentiles → 0…255, everything outside the brain 0.

    Percentiles over brain voxels only, so the zero background (80 % of a BraTS grid) and a few negative
    interpolation values at the brain's edge neither shrink the contrast nor turn the background grey.
    """
    inside = volume[brain]
    if inside.size == 0:
        return np.zeros(volume.shape, np.uint8)
    sample = inside[:: max(1, inside.size // 400_000)]  # a subsample is plenty for a display percentile
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((volume - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    out[~brain] = 0
    return out


def bounding_box(mask: np.ndarray, margin: int = CROP_MARGIN) -> tuple[slice, ...]:
    """Slices of ``mask``'s bounding box on every axis, ``margin`` voxels wider (clipped to the array)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for axis, n in enumerate(mask.shape):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, n)))
    return tuple(out)


def quantise(maps: np.ndarray, vmax: float) -> np.ndarray:
    """Anomaly maps → uint8 on the fixed scale 0…vmax (255 = vmax or more), the colour bar's scale."""
    return (np.clip(np.asarray(maps, np.float32) / max(float(vmax), 1e-12), 0, 1) * 255).round().astype(np.uint8)


def unit_to_uint8(images: np.ndarray) -> np.ndarray:
    """Images already in [0, 1] (uad's normalised inputs and reconstructions) → 0…255."""
    return (np.clip(np.asarray(images, np.float32), 0, 1) * 255).round().astype(np.uint8)


@dataclasses.dataclass
class DisplayCase:
    """A case ready for the viewer: every readable modality windowed and cropped to the brain."""

    case_id: str
    source: str  # the case's folder: the viewer shows which files it draws
    mods: dict[str, np.ndarray]  # (Z, Y, X) uint8 each
    labels: np.ndarray | None  # (Z, Y, X) uint8 label values, None when unlabelled or unreadable
    spacing: tuple[float, float, float]  # mm along (Z, Y, X)
    slice_labels: list[int]  # index in the source file of each Z
    errors: dict[str, str]  # modality → why it could not be read
    seg_error: str | None  # why the segmentation could not be read (names the file)
    crop: tuple[slice, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.mods.values())).shape

    @property
    def present(self) -> list[int]:
        return [] if self.labels is None else sorted(int(v) for v in np.unique(self.labels) if v)


def load_display_case(case) -> DisplayCase:
    """Read every modality of ``case`` (a ``uad.data.cases.Case``) and its segmentation for display.

    Each file is read on its own so one unreadable file costs only itself (reported, not raised).
    The brain mask is uad's (``brain_mask``: non-zero in any channel, largest part, holes filled).
    """
    from uad.core.errors import UADError
    from uad.data.cases import MODALITIES
    from uad.data.preprocess import brain_mask, canonical_spacing, display_stack
    from uad.data.volumes import load_case

    raw: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    first = None
    for mod in MODALITIES:
        if mod not in case.modalities:
            continue
        try:
            vols = load_case(dataclasses.replace(case, modalities={mod: case.modalities[mod]}, seg=None), (mod,))
        except UADError as exc:
            errors[mod] = str(exc)
            continue
        except MemoryError:
            errors[mod] = f"{case.modalities[mod]}: not enough memory to load this volume"
            continue
        if first is not None and vols.images.shape[1:] != first.images.shape[1:]:
            errors[mod] = (f"{case.modalities[mod]}: shape {vols.images.shape[1:]} differs from "
                           f"{case.modalities[next(iter(raw))].name} {first.images.shape[1:]}")
            continue
        first = first or vols
        raw[mod] = vols.images[0]
    out = DisplayCase(case.case_id, str(Path(next(iter(case.modalities.values()))).parent) if case.modalities else "",
                      {}, None, (1.0, 1.0, 1.0), [], errors, None)
    if first is None:
        return out
    labels = None
    if case.seg is not None:
        try:
            seg_vols = load_case(dataclasses.replace(case, modalities={first.modalities[0]: case.modalities[first.modalities[0]]}),
                                 first.modalities)
            labels = display_stack(seg_vols.labels)
        except UADError as exc:
            out.seg_error = str(exc)
        except MemoryError:
            out.seg_error = f"{case.seg}: not enough memory to load the segmentation"
    brain = display_stack(brain_mask(np.stack(list(raw.values()))))
    box = bounding_box(brain)
    out.crop = box
    for mod, volume in raw.items():
        out.mods[mod] = np.ascontiguousarray(window_to_uint8(display_stack(volume), brain)[box])
    if labels is not None:
        out.labels = np.ascontiguousarray(labels[box])
    sx, sy, sz = canonical_spacing(first.affine, first.ornt)
    out.spacing = (sz, sy, sx)
    out.slice_labels = [int(first.source_axial_index(k)) for k in range(box[0].start, box[0].stop)]
    return out
