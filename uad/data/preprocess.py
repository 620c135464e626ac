"""Preprocessing: brain mask, per-volume normalisation, crop + resize, axial slice selection.

One ``PreprocessConfig`` drives it and is saved with everything built from it (slice cache, checkpoints,
evaluations). ``SliceGeometry`` records how a volume became slices, so maps can be sent back to the
source grid (``to_source``). ``WorkingCase`` is a case at working size, fresh from here or read back
from the slice store (``uad.data.store``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from uad.core.errors import DataError
from uad.data.cases import Case
from uad.data.preprocess_config import PreprocessConfig  # noqa: F401  (re-exported: the config lives with its steps)
from uad.data.volumes import CaseVolumes, load_case

if TYPE_CHECKING:  # pandas is imported where a table is built: PreprocessConfig alone must stay light
    import pandas as pd


@dataclass
class SliceGeometry:
    """How a RAS+ volume became working-size slices (and back).

    Display orientation of axial slice k: ``canonical[:, :, k].T[::-1]`` (anterior up, patient left on the left).
    The square crop ``[top:top+side, left:left+side]`` of that image (zero-padded where it leaves the
    image) is resized to ``image_size``.
    """

    canonical_shape: tuple[int, int, int]
    source_shape: tuple[int, int, int]
    affine: np.ndarray
    ornt: np.ndarray
    top: int
    left: int
    side: int
    image_size: int
    kept: np.ndarray  # canonical axial indices of the kept slices, ascending

    def to_dict(self) -> dict[str, Any]:
        return {
            "canonical_shape": list(self.canonical_shape), "source_shape": list(self.source_shape),
            "affine": self.affine.tolist(), "ornt": self.ornt.tolist(), "top": self.top, "left": self.left,
            "side": self.side, "image_size": self.image_size, "kept": self.kept.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SliceGeometry":
        return cls(tuple(d["canonical_shape"]), tuple(d["source_shape"]), np.asarray(d["affine"], float),
                   np.asarray(d["ornt"], float), int(d["top"]), int(d["left"]), int(d["side"]),
                   int(d["image_size"]), np.asarray(d["kept"], int))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the RAS+ axes (x, y, z) of the canonical volume (source spacing, reordered)."""
        return canonical_spacing(self.affine, self.ornt)

    @property
    def working_pixel_mm(self) -> tuple[float, float]:
        """A working-size pixel's (row, column) size in mm: the in-plane spacing enlarged by the crop's resize."""
        sx, sy, _ = self.spacing
        f = self.side / self.image_size
        return sy * f, sx * f

    @property
    def voxel_ml(self) -> float:
        """Volume of one working-size voxel (one pixel of one kept slice) in mL."""
        r, c = self.working_pixel_mm
        return float(r * c * self.spacing[2] / 1000.0)

    # -- forward: volume → slices ---------------------------------------------------------------------
    def to_working(self, canonical: np.ndarray, kind: str = "image") -> np.ndarray:
        """(X, Y, Z) RAS+ volume → (S, size, size) kept slices. ``kind`` 'mask' resizes by area then ≥ 0.5."""
        # display_stack's view of the kept slices, not copied: the crop copies it, as float32, once (this was
        # three full copies per call; preprocessing a demo case called it three times).
        disp = canonical[..., self.kept].transpose(2, 1, 0)[:, ::-1, :]
        crop = _crop_square(disp, self.top, self.left, self.side, np.float32)
        out = _resize_stack(crop, self.image_size)
        return out >= 0.5 if kind == "mask" else out

    # -- inverse: slices → volume in the source grid ---------------------------------------------------
    def to_source(self, slices: np.ndarray) -> np.ndarray:
        """(S, size, size) maps of the kept slices → float32 volume in the source file's voxel order.

        Slices that were not kept, and pixels outside the crop, are 0.
        """
        if slices.shape[0] != len(self.kept):
            raise ValueError(f"expected {len(self.kept)} slices, got {slices.shape[0]}")
        X, Y, Z = self.canonical_shape
        crop = _resize_stack(slices.astype(np.float32), self.side)
        disp = np.zeros((len(self.kept), Y, X), np.float32)
        r0, c0 = max(self.top, 0), max(self.left, 0)
        r1, c1 = min(self.top + self.side, Y), min(self.left + self.side, X)
        disp[:, r0:r1, c0:c1] = crop[:, r0 - self.top:r1 - self.top, c0 - self.left:c1 - self.left]
        canonical = np.zeros((X, Y, Z), np.float32)
        canonical[..., self.kept] = disp[:, ::-1, :].transpose(2, 1, 0)
        from nibabel import orientations as o

        back = o.ornt_transform(o.axcodes2ornt(("R", "A", "S")), self.ornt)
        return np.ascontiguousarray(o.apply_orientation(canonical, back))


# The per-slice table of a WorkingCase; counts are in the original (source-resolution) slice.
SLICE_TABLE_COLUMNS = ("slice_index", "label", "tumour_pixels", "brain_pixels")


@dataclass
class WorkingCase:
    """One case at working size: what a model sees, its masks, and one table row per kept slice.

    The one type for a case after preprocessing, wherever it comes from: ``preprocess_case`` returns
    float32 arrays in memory; ``SliceStore.case`` returns memory-mapped arrays with ``images`` in float16
    as stored (scorers convert each batch to float32). ``in_memory`` turns the latter into the former.
    """

    case_id: str
    images: np.ndarray  # (S, C, size, size) in [0, 1]
    tumour: np.ndarray  # (S, size, size) bool; all False when unlabelled
    brain: np.ndarray  # (S, size, size) bool
    table: pd.DataFrame  # SLICE_TABLE_COLUMNS: axial index in the source file, any tumour, tumour and brain voxels
    geometry: SliceGeometry
    labelled: bool
    norm: list[tuple[float, float]] = field(default_factory=list)  # per channel (low, high) intensities

    @property
    def slice_index(self) -> np.ndarray:
        return self.table["slice_index"].to_numpy()

    @property
    def label(self) -> np.ndarray:
        return self.table["label"].to_numpy()

    @property
    def tumour_pixels(self) -> np.ndarray:
        return self.table["tumour_pixels"].to_numpy()

    @property
    def brain_pixels(self) -> np.ndarray:
        return self.table["brain_pixels"].to_numpy()

    def in_memory(self) -> "WorkingCase":
        """A copy with float32 images and every array read into memory, as fresh preprocessing gives.

        What outlives the cache entry it came from (a rebuild replaces its files) and needs no
        conversion per use (the app keeps it across reruns).
        """
        return replace(self, images=np.array(self.images, np.float32), tumour=np.array(self.tumour, bool),
                       brain=np.array(self.brain, bool), table=self.table.copy(), norm=list(self.norm))


def canonical_spacing(affine: np.ndarray, ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along the RAS+ axes of a volume reoriented by ``ornt`` from a file with ``affine``."""
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))  # per source axis
    out = [1.0, 1.0, 1.0]
    for src_axis, (ras_axis, _) in enumerate(np.asarray(ornt)):
        out[int(ras_axis)] = float(zooms[src_axis])
    return out[0], out[1], out[2]


CONVENTIONS = ("radiological", "neurological")


def screen_columns(width: int, convention: str) -> np.ndarray:
    """For each screen column of an axial or coronal view of a display stack, the X index (patient left → right)
    drawn there. Radiological (3D Slicer's and ITK-SNAP's default): the patient's right on the screen's left,
    X mirrored; neurological: X as stored. The app's viewer (viewer.js ``flipped()``) and the HTML report follow it."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    x = np.arange(width)
    return x[::-1] if convention == "radiological" else x


def display_stack(canonical: np.ndarray) -> np.ndarray:
    """(X, Y, Z) RAS+ volume → (Z, Y, X) stack of axial slices in display orientation."""
    return np.ascontiguousarray(canonical.transpose(2, 1, 0)[:, ::-1, :])


def brain_mask(images: np.ndarray) -> np.ndarray:
    """Brain = voxels non-zero in any channel, largest connected part, holes filled.

    BraTS background is exactly 0; real files carry small negative interpolation values at the brain's
    edge (seen in TCGA-DU-7294), so "non-zero", not "positive", marks brain. The morphology runs on the
    bounding box of the non-zero voxels only (about a third of a BraTS volume, three times faster).
    """
    nonzero = np.any(images != 0, axis=0)
    mask = np.zeros_like(nonzero)
    if not nonzero.any():
        return mask
    box = tuple(slice(int(idx[0]), int(idx[-1]) + 1)
                for idx in (np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)))
    sub = nonzero[box]
    labels, n = ndi.label(sub)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        sub = labels == sizes.argmax()
    # Fill holes: background not connected to the outside, found by labelling the background of the box
    # padded by one voxel (the same 6-connectivity as scipy's binary_fill_holes).
    background, _ = ndi.label(np.pad(~sub, 1, constant_values=True))
    mask[box] = background[1:-1, 1:-1, 1:-1] != background[0, 0, 0]
    return mask


def normalise(volume: np.ndarray, mask: np.ndarray, low: float, high: float) -> tuple[np.ndarray, tuple[float, float]]:
    """Clip to the [low, high] percentiles of brain voxels and scale to [0, 1]; 0 outside the brain."""
    lo, hi = np.percentile(volume[mask], [low, high])
    if hi <= lo:
        hi = lo + 1.0  # constant brain: avoid dividing by zero, everything maps to 0
    # Outside the brain everything is 0: the arithmetic runs on the brain's bounding box only (about a third of a
    # BraTS grid), voxel for voxel as it would on the whole volume.
    out = np.zeros(volume.shape, np.float32)
    box = tuple(slice(int(idx[0]), int(idx[-1]) + 1)
                for idx in (np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax))) for ax in range(mask.ndim)))
    inside = np.clip((volume[box] - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    inside[~mask[box]] = 0.0
    out[box] = inside
    return out, (float(lo), float(hi))


def preprocess_volumes(vols: CaseVolumes, config: PreprocessConfig) -> WorkingCase:
    import pandas as pd

    mask = brain_mask(vols.images)
    if not mask.any():
        raise DataError(vols.case_id, "empty brain mask")
    area = mask.sum(axis=(0, 1))
    kept = np.flatnonzero(area >= max(1, config.min_brain_fraction * area.max()))
    geometry = _square_crop(mask, kept, config, vols)

    channels, norm = [], []
    for c in range(vols.images.shape[0]):
        normed, stats = normalise(vols.images[c], mask, config.percentile_low, config.percentile_high)
        channels.append(geometry.to_working(normed))
        norm.append(stats)
    brain = geometry.to_working(mask, kind="mask")
    # Zero outside the working-size mask, so "background is exactly 0" holds after resizing too.
    images = np.clip(np.stack(channels, axis=1), 0.0, 1.0) * brain[:, None]
    if vols.tumour is not None:
        tumour = geometry.to_working(vols.tumour, kind="mask") & brain
        tumour_pixels = vols.tumour[..., kept].sum(axis=(0, 1))
    else:
        tumour = np.zeros_like(brain)
        tumour_pixels = np.zeros(len(kept), np.int64)
    table = pd.DataFrame({
        "slice_index": np.array([vols.source_axial_index(int(k)) for k in kept], np.int64),
        "label": tumour_pixels > 0,
        "tumour_pixels": tumour_pixels.astype(np.int64),
        "brain_pixels": area[kept].astype(np.int64),
    })
    return WorkingCase(
        case_id=vols.case_id,
        images=images.astype(np.float32),
        tumour=tumour,
        brain=brain,
        table=table,
        geometry=geometry,
        labelled=vols.tumour is not None,
        norm=norm,
    )


def preprocess_case(case: Case, config: PreprocessConfig) -> WorkingCase:
    return preprocess_volumes(load_case(case, config.modalities), config)


def _square_crop(mask: np.ndarray, kept: np.ndarray, config: PreprocessConfig, vols: CaseVolumes) -> SliceGeometry:
    """A square around the brain's in-plane bounding box (over kept slices), plus a margin."""
    footprint = display_stack(mask[..., kept]).any(axis=0)  # (Y, X)
    rows, cols = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = int(max(r1 - r0, c1 - c0) + 2 * config.crop_margin)
    top = int((r0 + r1) // 2 - side // 2)
    left = int((c0 + c1) // 2 - side // 2)
    return SliceGeometry(tuple(mask.shape), vols.shape, vols.affine, vols.ornt, top, left, side, config.image_size, kept)


def _crop_square(stack: np.ndarray, top: int, left: int, side: int, dtype=None) -> np.ndarray:
    """Crop (S, R, C) to (S, side, side) at (top, left), zero-padding where the square leaves the image; the
    values cast to ``dtype`` (default: the stack's)."""
    S, R, C = stack.shape
    out = np.zeros((S, side, side), dtype or stack.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + side, R), min(left + side, C)
    out[:, r0 - top:r1 - top, c0 - left:c1 - left] = stack[:, r0:r1, c0:c1]
    return out


def _resize_stack(stack: np.ndarray, size: int) -> np.ndarray:
    """Resize (S, h, w) to (S, size, size): area averaging to shrink, bilinear to enlarge."""
    if stack.shape[1:] == (size, size):
        return stack.astype(np.float32, copy=True)
    interp = cv2.INTER_AREA if size < stack.shape[1] else cv2.INTER_LINEAR
    out = np.empty((stack.shape[0], size, size), np.float32)
    for i, image in enumerate(stack.astype(np.float32, copy=False)):
        out[i] = cv2.resize(image, (size, size), interpolation=interp)
    return out
