"""Load and validate a case's NIfTI volumes with nibabel, in one canonical (RAS+) orientation.

Every failure raises ``DataError`` naming the file and the reason, never a numpy traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

from uad.core.errors import DataError
from uad.data.cases import Case

AFFINE_ATOL = 1e-3  # mm; BraTS affines agree exactly, resampled exports differ by float noise
# A header's size is checked before any allocation: a tiny file must not make us allocate gigabytes.
MAX_VOXELS_PER_AXIS = 512  # BraTS is 240x240x155; raise with $UAD_MAX_VOXELS_PER_AXIS for bigger scans
_GZIP_MAX_RATIO = 1100  # DEFLATE cannot compress better than ~1032:1, so smaller .nii.gz files are lying
# Skull-stripped volumes have a background of exact zeros (BraTS: ~80 % of the grid). Fewer than this
# fraction means the background is not 0, and the brain mask ("non-zero") would be the whole grid.
MIN_BACKGROUND_FRACTION = 0.05


def max_voxels_per_axis() -> int:
    """The largest size per axis a header may claim: $UAD_MAX_VOXELS_PER_AXIS, else MAX_VOXELS_PER_AXIS."""
    text = os.environ.get("UAD_MAX_VOXELS_PER_AXIS")
    if not text:
        return MAX_VOXELS_PER_AXIS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        from uad.core.errors import ConfigError

        raise ConfigError(f"UAD_MAX_VOXELS_PER_AXIS must be a positive integer, got {text!r}")
    return value


@dataclass
class CaseVolumes:
    """A case's requested modalities (float32, RAS+) stacked as channels, and its whole-tumour mask."""

    case_id: str
    modalities: tuple[str, ...]
    images: np.ndarray  # (C, X, Y, Z) float32, RAS+
    tumour: np.ndarray | None  # (X, Y, Z) bool (seg > 0), None when the case is unlabelled
    labels: np.ndarray | None  # (X, Y, Z) uint8 sub-region labels as stored, None when unlabelled
    affine: np.ndarray  # the source files' affine (4×4)
    shape: tuple[int, int, int]  # the source files' shape
    ornt: np.ndarray  # nibabel orientation of the source → RAS+ (io_orientation of the affine)

    def source_axial_index(self, k: int) -> int:
        """The index in the source file of canonical axial slice ``k`` (equal to ``k`` for BraTS files)."""
        axis = int(np.flatnonzero(self.ornt[:, 0] == 2)[0])
        flipped = self.ornt[axis, 1] < 0
        return self.shape[axis] - 1 - k if flipped else k


def _check_header(path: Path, img, shape: tuple[int, ...], max_axis: int) -> None:
    """Refuse what the header claims before reading any voxel: size, voxel type, enough bytes in the file."""
    if any(n < 1 for n in shape):
        raise DataError(path, f"empty image: the header's shape is {shape}")
    if max(shape) > max_axis:
        raise DataError(path, f"the header claims shape {shape}, more than {max_axis} voxels along an axis "
                              "(set UAD_MAX_VOXELS_PER_AXIS to allow larger volumes)")
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        kind = "RGB" if dtype.names and set(dtype.names) >= {"R", "G", "B"} else str(dtype)
        raise DataError(path, f"unsupported voxel type {kind}: expected one grey-level intensity per voxel")
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        if size * _GZIP_MAX_RATIO < needed:
            raise DataError(path, f"the header claims {needed:,} bytes of image data, more than a {size:,}-byte "
                                  "gzip file can hold: truncated file or wrong header")
    else:
        offset = int(getattr(img.dataobj, "offset", 0) or 0)  # the loaded header's vox_offset is reset to 0
        if offset + needed > size:
            raise DataError(path, f"the file is {size:,} bytes but its header describes {offset + needed:,}: "
                                  "truncated file or wrong header")


def _open(path: Path, max_axis: int | None = None):
    """Open one file and check its header, reading no voxel → (image, shape). Raises DataError."""
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except PermissionError:
        raise DataError(path, "permission denied") from None
    except Exception as exc:  # nibabel raises many types for bad headers
        raise DataError(path, f"not a readable NIfTI file ({exc})") from None
    try:
        shape = tuple(int(s) for s in img.shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(path, f"not a readable NIfTI header ({exc})") from None
    # Some exporters write (X, Y, Z, 1); anything else beyond 3-D is not a single volume.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {tuple(img.shape)}")
    _check_header(path, img, shape, max_voxels_per_axis() if max_axis is None else max_axis)
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - a header nibabel cannot turn into an affine
        raise DataError(path, f"not a readable NIfTI header ({exc})") from None
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(path, "invalid affine (not finite or singular)")
    return img, shape


def _voxels(path: Path, img, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Read the voxels of an image ``_open`` checked → (RAS+ float32 data, source affine, orientation, shape)."""
    affine = np.asarray(img.affine, dtype=np.float64)
    ornt = ornt_mod.io_orientation(affine)
    proxy = img.dataobj
    try:
        if _small_unscaled_integers(proxy):
            # Reoriented while still 8/16-bit and then cast: the same float32 values (every such integer is exact
            # in float32), with the reorienting copy over half or a quarter of the bytes (~60 ms less per BraTS
            # volume; the Data page reads five per case).
            raw = np.asarray(proxy.get_unscaled()).reshape(shape)
            return ornt_mod.apply_orientation(raw, ornt).astype(np.float32, order="C"), affine, ornt, shape
        data = np.asarray(proxy, dtype=np.float32).reshape(shape)
    except MemoryError:
        raise DataError(path, f"not enough memory to load a {shape} volume") from None
    except Exception as exc:  # truncated gzip streams, bad scaling, exotic types: never a traceback
        raise DataError(path, f"truncated or corrupt image data ({exc})") from None
    return np.ascontiguousarray(ornt_mod.apply_orientation(data, ornt)), affine, ornt, shape


def _small_unscaled_integers(proxy) -> bool:
    """Whether a NIfTI's stored voxels are 8- or 16-bit integers with no scaling (slope 1, intercept 0; nibabel
    reads an unset scaling as that), i.e. the file's values are the stored ones."""
    dtype = getattr(proxy, "dtype", None)
    try:
        slope, inter = float(getattr(proxy, "slope", np.nan)), float(getattr(proxy, "inter", np.nan))
    except (TypeError, ValueError):
        return False
    return (dtype is not None and np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize <= 2
            and slope == 1.0 and inter == 0.0 and hasattr(proxy, "get_unscaled"))


def _read(path: Path, max_axis: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Read one file → (RAS+ float32 data, source affine, orientation, source shape). Raises DataError."""
    img, shape = _open(path, max_axis)
    return _voxels(path, img, shape)


def _check_intensities(path: Path, data: np.ndarray) -> None:
    """The brain mask is "non-zero voxels", so a channel needs a zero background and some contrast inside."""
    if not np.all(np.isfinite(data)):
        raise DataError(path, "contains non-finite values (NaN or inf)")
    inside = data[data != 0]
    if inside.size == 0:
        raise DataError(path, "empty brain: every voxel is 0")
    background = 1.0 - inside.size / data.size
    if background < MIN_BACKGROUND_FRACTION:
        raise DataError(path, f"background is not 0: only {background:.1%} of voxels are exactly 0. Expected a "
                              "skull-stripped volume with a zero background (as in BraTS)")
    if inside.min() == inside.max():
        raise DataError(path, f"constant volume: every non-zero voxel is {inside.min():g}, no image contrast")


def load_case(case: Case, modalities: tuple[str, ...] | list[str], max_voxels_per_axis: int | None = None) -> CaseVolumes:
    """Load the requested modalities (and the seg if present) of a case, validated and reoriented.

    ``max_voxels_per_axis`` bounds the size a header may claim (default: $UAD_MAX_VOXELS_PER_AXIS or 512).
    """
    modalities = tuple(modalities)
    case.require(modalities)
    ref_path = case.modalities[modalities[0]]
    # Every header first, before any voxel is read: a file that claims a huge volume, or one on another
    # grid than the others, costs a header read, not gigabytes.
    paths_ = [case.modalities[m] for m in modalities] + ([case.seg] if case.seg is not None else [])
    opened = [(p, *_open(p, max_voxels_per_axis)) for p in paths_]
    ref_img, ref_shape = opened[0][1], opened[0][2]
    ref_affine = np.asarray(ref_img.affine, dtype=np.float64)
    for path, img, shape in opened[1:]:
        _check_same_grid(path, shape, np.asarray(img.affine, dtype=np.float64), ref_path, ref_shape, ref_affine)

    channels = []
    ornt = None
    for path, img, shape in opened[:len(modalities)]:
        data, _, ornt_, _ = _voxels(path, img, shape)
        ornt = ornt if ornt is not None else ornt_
        _check_intensities(path, data)
        channels.append(data)
    images = np.stack(channels)

    tumour = labels = None
    if case.seg is not None:
        path, img, shape = opened[-1]
        seg = _voxels(path, img, shape)[0]
        labels = _check_labels(case.seg, seg)
        tumour = labels > 0  # whole tumour in every label convention (2021: 1/2/4, 2023: 1/2/3, older: 1–4)
    return CaseVolumes(case.case_id, modalities, images, tumour, labels, ref_affine, tuple(ref_shape), ornt)


def _check_same_grid(path: Path, shape, affine, ref_path: Path, ref_shape, ref_affine) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise DataError(path, f"shape {tuple(shape)} differs from {ref_path.name} {tuple(ref_shape)}")
    if not np.allclose(affine, ref_affine, atol=AFFINE_ATOL):
        raise DataError(path, f"affine differs from {ref_path.name}: the volumes are not on the same grid")


def _check_labels(path: Path, seg: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(seg)):
        raise DataError(path, "segmentation contains non-finite values")
    if seg.min() < 0:
        raise DataError(path, f"segmentation has negative labels (min {seg.min():g})")
    if not np.array_equal(seg, np.round(seg)):
        raise DataError(path, "segmentation has non-integer labels")
    if seg.max() > 255:
        raise DataError(path, f"segmentation label {seg.max():g} is out of range (0-255)")
    return seg.astype(np.uint8)
