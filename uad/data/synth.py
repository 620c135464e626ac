"""Synthetic demo cohort in exact BraTS 2021 layout, built from the MNI152 2009a template nilearn ships.

A case is the template's tissue maps (grey matter, white matter, CSF) pulled through a random affine, a
smooth elastic field and the mass effect of 0-2 gliomas, then turned into FLAIR/T1/T1ce/T2 by tissue
contrasts, tumour compartments, a bias field and Rician noise. Every random draw comes from
``(seed, case index)``, so a case is bit-identical however many workers build the cohort.

Geometry is computed in the canonical (RAS) index space of the 240x240x155 BraTS grid and flipped to
BraTS's LPS-like storage only when the arrays are returned.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
import zlib
from concurrent.futures import as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.special import erf, expit
from tqdm import tqdm

from uad.core.errors import ConfigError, DataError
from uad.core.fileio import current_umask, read_json, write_json
from uad.core.workers import spawn_pool, submit_all

DEFAULT_CASES = 24
GENERATOR_VERSION = 1
GRID_SHAPE = (240, 240, 155)
# BraTS stores x and y reversed (affine diag(-1, -1, 1)); the third axis runs inferior -> superior.
BRATS_AFFINE = np.array([[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
MODALITIES = ("flair", "t1", "t1ce", "t2")
SEG_LABELS = (0, 1, 2, 4)

_TEMPLATE_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
# Where the template's brain centre lands in the canonical grid: centred in-plane, low enough that the
# crown stays inside the 155 slices (the brainstem is cut at the bottom, as in BraTS).
_GRID_CENTRE = np.array([119.5, 119.5, 66.0], dtype=np.float32)
_BASE_SCALE = 0.94  # the MNI brain is larger than an average BraTS brain
_STEP = 4  # mm between control points of the smooth (elastic, bias, texture) fields
_MASS_EFFECT = 0.3  # peak tissue displacement is about 0.15 x the tumour radius
_TUMOUR_FREE_EVERY = 6  # exactly one tumour-free case per block of this many consecutive indices

# Signal of each compartment as a multiple of normal white matter, per modality (flair, t1, t1ce, t2).
_CONTRAST = {
    "gm": (1.12, 0.64, 0.64, 1.40),
    "wm": (1.00, 1.00, 1.00, 1.00),
    "csf": (0.30, 0.28, 0.33, 4.20),
    "vessel": (0.35, 0.50, 1.50, 1.20),  # enhancing vessels / choroid plexus within CSF spaces
    "oedema": (1.85, 0.66, 0.66, 2.20),
    "non_enhancing": (1.70, 0.55, 0.56, 2.50),
    "enhancing": (1.50, 0.75, 1.90, 1.60),
    "necrosis": (1.00, 0.40, 0.40, 3.50),
}
_TUMOUR_PARTS = ("oedema", "non_enhancing", "enhancing", "necrosis")
_PART_TEXTURE = (0.05, 0.10, 0.15, 0.20)  # heterogeneity (relative std) of each tumour part
_PART_LABEL = (0, 2, 1, 4, 1)  # seg label of each part's rank (rank 0 = no tumour, then _TUMOUR_PARTS)
_WM_LEVEL = (300.0, 600.0, 600.0, 430.0)  # typical white-matter intensity in BraTS files, per modality


def case_name(index: int) -> str:
    return f"BraTS2021_{index:05d}"


def case_plan(index: int, seed: int) -> int:
    """Number of tumours (0, 1 or 2) in case ``index`` of the cohort drawn with ``seed``.

    One case in every block of six is tumour-free (about 17 %), so any cohort of six or more cases holds
    both kinds; a quarter of the others get a second tumour.
    """
    block = np.random.default_rng([seed, index // _TUMOUR_FREE_EVERY, 0])
    if index % _TUMOUR_FREE_EVERY == block.integers(_TUMOUR_FREE_EVERY):
        return 0
    return 2 if np.random.default_rng([seed, index, 1]).random() < 0.25 else 1


# ----------------------------------------------------------------------------------------------- template


@dataclass(frozen=True)
class _Template:
    brain: np.ndarray  # (X, Y, Z) float32 brain mask of the template
    gm: np.ndarray  # grey-matter probability, float32
    wm: np.ndarray  # white-matter probability, float32
    lo: np.ndarray  # brain bounding box, template voxels
    hi: np.ndarray
    depth_map: np.ndarray  # distance to the brain surface (mm) on a 2 mm grid (template voxel / 2)
    sites: np.ndarray  # (N, 3) candidate tumour centres (cerebral white matter), template voxels
    depth: np.ndarray  # (N,) distance of each site from the brain surface, mm


def _template_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def _template_paths() -> dict[str, Path]:
    """Paths of the template files nilearn ships; nothing is ever downloaded."""
    paths = {key: _template_dir() / name for key, name in _TEMPLATE_FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise DataError(path, "MNI152 2009a template file missing from the nilearn installation")
    return paths


@lru_cache(maxsize=1)
def _template() -> _Template:
    """Load the MNI152 2009a template once per process."""
    volumes = {k: np.asarray(nib.load(p).dataobj, dtype=np.float32) for k, p in _template_paths().items()}
    # The template is skull-stripped: zero outside the brain, >= 28 everywhere inside (no holes to fill).
    brain = volumes["t1"] > 0
    gm = volumes["gm"] / 255.0 * brain
    wm = np.minimum(volumes["wm"] / 255.0, 1.0 - gm) * brain
    filled = np.argwhere(brain)
    # Distance to the surface on a 2 mm grid is plenty for choosing tumour sites, and 8x cheaper.
    depth = ndi.distance_transform_edt(brain[::2, ::2, ::2]) * 2.0
    coarse_wm = wm[::2, ::2, ::2]
    # Gliomas are mostly supratentorial: keep sites above MNI z = -10 mm (template slice 62).
    above = np.arange(coarse_wm.shape[2])[None, None, :] * 2 >= 62
    sites = np.argwhere((coarse_wm > 0.6) & (depth >= 8.0) & above)
    return _Template(
        brain=brain.astype(np.float32),
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        lo=filled.min(0).astype(np.float32),
        hi=filled.max(0).astype(np.float32),
        depth_map=depth.astype(np.float32),
        sites=(sites * 2).astype(np.float32),
        depth=depth[tuple(sites.T)].astype(np.float32),
    )


# ----------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Transform:
    """Canonical grid voxel u -> template voxel ``centre + matrix @ (u - _GRID_CENTRE) + shift``."""

    matrix: np.ndarray  # (3, 3) float32
    shift: np.ndarray  # (3,) float32, template voxels
    centre: np.ndarray  # template brain centre

    def to_grid(self, t: np.ndarray) -> np.ndarray:
        """Inverse map (affine part only) of template points ``t`` (..., 3) into the grid."""
        inv = np.linalg.inv(self.matrix.astype(np.float64))
        return (t - self.centre - self.shift) @ inv.T + _GRID_CENTRE


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_transform(rng: np.random.Generator, template: _Template) -> _Transform:
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    scale = _BASE_SCALE * rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3)
    matrix = _rotation(angles) @ np.diag(1.0 / scale)
    return _Transform(
        matrix=matrix.astype(np.float32),
        shift=rng.uniform(-4, 4, 3).astype(np.float32),
        centre=((template.lo + template.hi) / 2).astype(np.float32),
    )


def _crop_box(transform: _Transform, template: _Template, margin: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Grid box that holds the warped brain: image of the template's bounding box, plus a margin."""
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float32)
    corners = template.lo + corners * (template.hi - template.lo)
    grid = transform.to_grid(corners)
    lo = np.clip(np.floor(grid.min(0)) - margin, 0, None).astype(int)
    hi = np.minimum(np.ceil(grid.max(0)) + margin + 1, GRID_SHAPE).astype(int)
    return lo, hi


def _lerp_weights(n_low: int, n_full: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour and weight of ``n_full`` points spread evenly over ``n_low`` control points."""
    pos = np.linspace(0, n_low - 1, n_full)
    left = np.minimum(pos.astype(int), n_low - 2)
    return left, (pos - left).astype(np.float32)


def _lerp_axis(arr: np.ndarray, n: int, axis: int) -> np.ndarray:
    left, frac = _lerp_weights(arr.shape[axis], n)
    frac = frac.reshape([-1 if i == axis else 1 for i in range(arr.ndim)])
    lo = np.take(arr, left, axis=axis)
    hi = np.take(arr, left + 1, axis=axis)
    hi -= lo
    hi *= frac
    hi += lo
    return hi


def _upsample(low: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear upsampling (corners aligned) of (C, a, b, c) control-point fields to (C, *shape).

    Separable; the last, full-size pass is written slice by slice to avoid full-size temporaries
    (several times faster than ndimage.zoom).
    """
    small = _lerp_axis(_lerp_axis(low, shape[2], 3), shape[1], 2)
    left, frac = _lerp_weights(small.shape[1], shape[0])
    step = np.diff(small, axis=1)
    out = np.empty((low.shape[0], *shape), dtype=np.float32)
    for x, (i, f) in enumerate(zip(left, frac)):
        np.multiply(step[:, i], f, out=out[:, x])
        out[:, x] += small[:, i]
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation."""
    white = rng.standard_normal(shape, dtype=np.float32)
    field = ndi.gaussian_filter(white, sigma, mode="reflect", truncate=3.0)
    return field / max(float(field.std()), 1e-6)


# ----------------------------------------------------------------------------------------------- tumours


@dataclass(frozen=True)
class _Tumour:
    centre: np.ndarray  # canonical grid voxel
    radius: float  # whole tumour (oedema) radius, mm
    core_ratio: float  # tumour core radius / radius
    rim: float  # enhancing rim thickness, mm; 0 = low-grade-like (non-enhancing core)
    rotation: np.ndarray  # (3, 3) orientation of the ellipsoid
    axes: np.ndarray  # (3,) relative semi-axes


def _draw_tumours(
    rng: np.random.Generator, n: int, template: _Template, transform: _Transform
) -> list[_Tumour]:
    tumours = []
    for i in range(n):
        # Log-uniform radius: whole tumours from a few hundred voxels to ~100k voxels.
        radius = float(np.exp(rng.uniform(np.log(5.0), np.log(28.0)))) * (0.7 if i else 1.0)
        high_grade = rng.random() < 0.7
        deep_enough = template.depth >= min(0.5 * radius + 6.0, 0.8 * float(template.depth.max()))
        site = template.sites[rng.choice(np.flatnonzero(deep_enough))] + rng.uniform(-1, 1, 3)
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        tumours.append(
            _Tumour(
                centre=transform.to_grid(site).astype(np.float32),
                radius=radius,
                core_ratio=float(rng.uniform(0.35, 0.7) if high_grade else rng.uniform(0.45, 0.85)),
                rim=float(rng.uniform(1.5, 4.0)) if high_grade else 0.0,
                rotation=(q * np.sign(np.diag(r))).astype(np.float32),
                axes=np.exp(rng.normal(0, 0.15, 3)).astype(np.float32),
            )
        )
    return tumours


def _mass_effect(points: np.ndarray, tumours: list[_Tumour]) -> np.ndarray:
    """Displacement (3, ...) to subtract from grid points ``points`` (3, ...) so tissue is pushed outward.

    Sampling closer to the centre moves tissue away from it; the Gaussian fall-off keeps it local and the
    map monotonic (``_MASS_EFFECT`` < 1).
    """
    total = np.zeros_like(points)
    for t in tumours:
        offset = points - t.centre.reshape(3, *([1] * (points.ndim - 1)))
        r2 = (offset**2).sum(0) / (1.2 * t.radius) ** 2
        total += offset * (_MASS_EFFECT * np.exp(-r2))
    return total


@dataclass
class _Canvas:
    """Brain voxels of the crop box, as flat per-point arrays, plus what tumours paint on them."""

    index: np.ndarray  # crop-shaped int32: point number of each brain voxel, -1 outside the brain
    wm: np.ndarray  # (N,) white-matter fraction of each point
    csf: np.ndarray  # before cortical folding: large CSF spaces (ventricles), not sulci
    rank: np.ndarray  # crop-shaped uint8: tumour part rank (see _PART_LABEL)
    parts: np.ndarray  # (4, N) soft membership of each tumour part
    texture: np.ndarray  # (N,) tumour texture noise


def _paint_tumour(rng: np.random.Generator, t: _Tumour, canvas: _Canvas, crop_lo: np.ndarray) -> None:
    centre = t.centre - crop_lo
    half = 1.4 * t.radius * float(t.axes.max()) + 3  # the outline below stays within 1.35 radii
    lo = np.maximum(np.floor(centre - half), 0).astype(int)
    hi = np.minimum(np.ceil(centre + half) + 1, canvas.index.shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(hi - lo)
    idx = canvas.index[box]
    inside = idx >= 0

    offsets = [np.arange(a, b, dtype=np.float32) - c for a, b, c in zip(lo, hi, centre)]
    grid = np.stack(np.meshgrid(*offsets, indexing="ij"))
    local = np.einsum("ji,j...->i...", t.rotation, grid) / t.axes.reshape(3, 1, 1, 1)
    dist = np.sqrt((local**2).sum(0))  # mm, in the ellipsoid's own scaled frame

    wm = np.where(inside, canvas.wm[idx], 0)
    csf = np.where(inside, canvas.csf[idx], 0)
    sigma = float(np.clip(t.radius / 4, 2.0, 6.0))

    def wobble(scale: float) -> np.ndarray:  # smooth, bounded in (-1, 1)
        return np.tanh(_smooth_noise(rng, shape, scale))

    # Irregular outlines: perturbed ellipsoids; oedema spreads along white matter and spares ventricles.
    outline = dist / t.radius + 0.2 * wobble(sigma) - 0.3 * (wm - 0.5)
    oedema = (outline < 1) & (csf < 0.8)
    core_r = dist / (t.radius * t.core_ratio) + 0.15 * wobble(sigma)
    core = core_r < 1
    rank = np.where(oedema, 1, 0)
    if t.rim > 0:
        thickness = t.rim * (1 + 0.5 * wobble(2.5))  # always positive: necrosis stays inside the rim
        necrotic = core_r < 1 - thickness / (t.radius * t.core_ratio)
        rank = np.where(core, 3, rank)
        rank = np.where(necrotic, 4, rank)
    else:
        rank = np.where(core, 2, rank)
    rank = np.where(inside, rank, 0).astype(np.uint8)
    np.maximum(canvas.rank[box], rank, out=canvas.rank[box])

    points = idx[inside]
    for part_rank in np.unique(rank[rank > 0]):  # only the parts this tumour has
        # Soft edges: the intensity change fades over ~1 mm around the labelled region.
        soft = ndi.gaussian_filter((rank == part_rank).astype(np.float32), 1.0)[inside]
        np.maximum(canvas.parts[part_rank - 1, points], soft, out=soft)
        canvas.parts[part_rank - 1, points] = soft
    canvas.texture[points] = _smooth_noise(rng, shape, 1.5)[inside]


# ----------------------------------------------------------------------------------------------- case


def _case_index(case_id: str) -> int:
    """Trailing number of a case id (``BraTS2021_00012`` -> 12); a stable hash for other names."""
    match = re.search(r"(\d+)$", case_id)
    return int(match.group(1)) if match else zlib.crc32(case_id.encode("utf-8"))


def generate_case(case_id: str, seed: int) -> dict[str, np.ndarray]:
    """Arrays of one synthetic case in BraTS storage order (240, 240, 155).

    ``flair``, ``t1``, ``t1ce``, ``t2``: int16, exactly 0 outside the brain, >= 1 inside;
    ``seg``: uint8 with labels 0 (background/normal), 1 (necrotic or non-enhancing core), 2 (oedema),
    4 (enhancing tumour).
    """
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    index = _case_index(case_id)
    rng = np.random.default_rng([seed, index])
    template = _template()
    transform = _random_transform(rng, template)
    tumours = _draw_tumours(rng, case_plan(index, seed), template, transform)
    crop_lo, crop_hi = _crop_box(transform, template)
    fields = _smooth_fields(rng, transform, tumours, crop_lo, crop_hi)
    mask, tissues, ventricles = _warp_tissues(rng, template, fields[:3])

    n_points = len(ventricles)
    index_map = np.full(mask.shape, -1, dtype=np.int32)
    index_map[mask] = np.arange(n_points, dtype=np.int32)
    canvas = _Canvas(
        index=index_map,
        wm=tissues["wm"],
        csf=ventricles,
        rank=np.zeros(mask.shape, dtype=np.uint8),
        parts=np.zeros((len(_TUMOUR_PARTS), n_points), dtype=np.float32),
        texture=np.zeros(n_points, dtype=np.float32),
    )
    for tumour in tumours:
        _paint_tumour(rng, tumour, canvas, crop_lo)
    signals = _render(rng, tissues, canvas, fields[3:, mask])

    crop = tuple(slice(int(a), int(b)) for a, b in zip(crop_lo, crop_hi))
    arrays = {}
    for name, values in signals.items():
        arrays[name] = np.zeros(GRID_SHAPE, dtype=np.int16)
        arrays[name][crop][mask] = values
    arrays["seg"] = np.zeros(GRID_SHAPE, dtype=np.uint8)
    arrays["seg"][crop] = np.asarray(_PART_LABEL, dtype=np.uint8)[canvas.rank]
    # Canonical (RAS) -> BraTS storage: x and y reversed.
    return {name: np.ascontiguousarray(a[::-1, ::-1, :]) for name, a in arrays.items()}


def _smooth_fields(
    rng: np.random.Generator,
    transform: _Transform,
    tumours: list[_Tumour],
    crop_lo: np.ndarray,
    crop_hi: np.ndarray,
) -> np.ndarray:
    """(8, *crop) fields: template coordinates (3), log bias per modality (4), tissue texture (1).

    Drawn on a control grid every ``_STEP`` mm and upsampled; the affine part of the coordinates is exact
    under linear interpolation, the elastic, mass-effect, bias and texture parts are smooth.
    """
    crop_shape = tuple(int(n) for n in crop_hi - crop_lo)
    n_low = tuple(max(2, -(-(n - 1) // _STEP) + 1) for n in crop_shape)
    axes = [np.linspace(0, n - 1, m, dtype=np.float32) + lo for n, m, lo in zip(crop_shape, n_low, crop_lo)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"))
    points = points - _mass_effect(points, tumours)
    # einsum, not tensordot: BLAS results may depend on its thread count, einsum's loops do not.
    coords = np.einsum("ij,j...->i...", transform.matrix, points - _GRID_CENTRE.reshape(3, 1, 1, 1))
    coords += (transform.centre + transform.shift).reshape(3, 1, 1, 1)
    coords += rng.uniform(1.5, 3.0) * _smooth_noise(rng, (3, *n_low), (0, 3, 3, 3))  # elastic, ~12 mm scale
    shared = _smooth_noise(rng, n_low, 8)  # sequences share much of the coil's bias field
    bias = [rng.uniform(0.08, 0.18) * (0.6 * shared + 0.8 * _smooth_noise(rng, n_low, 8)) for _ in MODALITIES]
    texture = _smooth_noise(rng, n_low, 1.0)
    return _upsample(np.concatenate([coords, np.stack(bias), texture[None]]), crop_shape)


def _warp_tissues(
    rng: np.random.Generator, template: _Template, coords: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Brain mask of the crop, tissue fractions of its voxels (flat, summing to 1), and pre-folding CSF.

    The brain map is interpolated over the whole crop; grey/white matter only where there is brain.
    """
    brain = ndi.map_coordinates(template.brain, coords, order=1)
    mask = brain > 0.5
    at = coords[:, mask]
    fraction = brain[mask]
    gm = ndi.map_coordinates(template.gm, at, order=1) / fraction
    wm = ndi.map_coordinates(template.wm, at, order=1) / fraction
    csf = np.clip(1 - gm - wm, 0, 1)
    half = tuple(-(-n // 2) for n in mask.shape)  # 2 mm noise grid, upsampled: cheap and smooth enough
    noise = np.stack([_smooth_noise(rng, half, sigma) for sigma in (1.0, 0.75)])
    folds, vessels = _upsample(noise, mask.shape)[:, mask]
    depth = ndi.map_coordinates(template.depth_map, at / 2, order=1)
    folded_gm, folded_wm, folded_csf = _fold_cortex(gm, wm, csf, folds, np.clip((18 - depth) / 10, 0, 0.85))
    vessel = folded_csf * expit((vessels - 1.8) / 0.25)  # sparse small blobs, only where there is CSF
    tissues = {"gm": folded_gm, "wm": folded_wm, "csf": folded_csf - vessel, "vessel": vessel}
    return mask, tissues, csf


def _fold_cortex(
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    noise: np.ndarray,
    weight: np.ndarray,
    softness: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the template's blurred (population-average) cortex into crisp, individual gyri.

    ``u`` = P(|N(0,1)| < |noise|) is uniform in [0, 1) and smallest on the zero sheets of the smooth
    noise. Ordering tissues along ``u`` (CSF, then grey, then white matter) keeps each tissue's
    probability but lays it out as sulcus -> cortical ribbon -> white-matter core, like real gyri.
    ``weight`` (0..1) limits this to the cortex; deep structures keep the template's maps.
    """
    u = erf(np.abs(noise) * np.float32(1 / np.sqrt(2)))
    crisp_csf = expit((csf - u) / softness)
    crisp_wm = expit((u - csf - gm) / softness)
    crisp_gm = 1 - crisp_csf - crisp_wm
    keep = 1 - weight
    return weight * crisp_gm + keep * gm, weight * crisp_wm + keep * wm, weight * crisp_csf + keep * csf


def _render(
    rng: np.random.Generator, tissues: dict[str, np.ndarray], canvas: _Canvas, smooth: np.ndarray
) -> dict[str, np.ndarray]:
    """Integer intensities of the brain points for each modality.

    ``tissues`` maps normal-tissue names of ``_CONTRAST`` to per-point fractions.
    ``smooth`` holds the upsampled log bias fields (one per modality) and the tissue texture field.
    """
    texture = 1 + 0.04 * smooth[-1]
    tumour_weight = canvas.parts.sum(0)
    # Overlapping tumours can sum past 1; renormalise so the mix stays a convex combination.
    parts = canvas.parts / np.maximum(tumour_weight, 1)
    normal_weight = 1 - np.minimum(tumour_weight, 1)
    out = {}
    for m, name in enumerate(MODALITIES):
        jitter = {k: float(np.exp(rng.normal(0, 0.06))) * v[m] for k, v in _CONTRAST.items()}
        signal = sum(fraction * jitter[tissue] for tissue, fraction in tissues.items())
        signal *= texture * normal_weight
        for p, part in enumerate(_TUMOUR_PARTS):
            signal += parts[p] * (jitter[part] * (1 + _PART_TEXTURE[p] * canvas.texture))
        level = _WM_LEVEL[m] * float(np.exp(rng.uniform(np.log(0.75), np.log(1.5))))
        signal *= level * np.exp(smooth[m])
        sigma = level * rng.uniform(0.02, 0.04)
        # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
        real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        magnitude = np.sqrt(real * real + imag * imag)
        out[name] = np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)
    return out


# ----------------------------------------------------------------------------------------------- files


def _tag(seed: int) -> str:
    return f"uad-synth v{GENERATOR_VERSION} seed={seed}"


def _save_nifti(path: Path, array: np.ndarray, descrip: str) -> None:
    """gzip level 1: ~3x faster than nibabel's default, files barely larger."""
    image = nib.Nifti1Image(array, BRATS_AFFINE)
    image.set_qform(BRATS_AFFINE, code=1)
    image.set_sform(BRATS_AFFINE, code=1)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = descrip
    with open(path, "wb") as fh:
        fh.write(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))
        fh.flush()
        os.fsync(fh.fileno())


def write_case(out_dir: str | Path, case_id: str, arrays: dict[str, np.ndarray], descrip: str = "") -> Path:
    """Write ``<out_dir>/<case_id>/<case_id>_{flair,t1,t1ce,t2,seg}.nii.gz`` atomically.

    The files go into a hidden temporary folder beside the destination, renamed into place only once
    all five are written, so a reader never sees a partial case. An existing folder is replaced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / case_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".tmp", dir=out_dir))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the case folder should be readable like any other
        for name in (*MODALITIES, "seg"):
            _save_nifti(tmp / f"{case_id}_{name}.nii.gz", arrays[name], descrip)
        if final.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".old", dir=out_dir))
            os.replace(final, old / case_id)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _is_complete(case_dir: Path, seed: int) -> bool:
    """True if the folder holds all five files written by this generator version with ``seed``."""
    files = [case_dir / f"{case_dir.name}_{name}.nii.gz" for name in (*MODALITIES, "seg")]
    if not all(f.is_file() for f in files):
        return False
    try:
        descrip = nib.load(files[0]).header["descrip"].item().decode("ascii", "replace")
    except Exception:  # unreadable header: regenerate
        return False
    return descrip == _tag(seed)


def _build_case(out_dir: Path, case_id: str, seed: int) -> Path:
    return write_case(out_dir, case_id, generate_case(case_id, seed), descrip=_tag(seed))


MARKER = ".uad-synth.json"  # written into every cohort folder synth creates, so it can recognise its own
_HIDDEN_LEFTOVER = re.compile(r"^\.(BraTS2021_\d{5}\.|cohort\.json\.|\.uad-synth\.json\.)")


def _written_by_synth_case(case_dir: Path) -> bool:
    """True if every entry of ``case_dir`` is a NIfTI file this generator wrote (any seed or version)."""
    try:
        entries = list(case_dir.iterdir())
    except OSError:
        return False
    for path in entries:
        if not (path.is_file() and re.fullmatch(rf"{re.escape(case_dir.name)}_(flair|t1|t1ce|t2|seg)\.nii\.gz", path.name)):
            return False
        try:
            descrip = nib.load(path).header["descrip"].item().decode("ascii", "replace")
        except Exception:  # noqa: BLE001 - unreadable: not provably ours
            return False
        if not descrip.startswith("uad-synth "):
            return False
    return True


def _check_out_dir(out_dir: Path, case_ids: list[str], seed: int) -> bool:
    """Refuse a folder synth did not create; return True if ``out_dir`` is an existing synth cohort.

    Synth must never delete or overwrite anything it did not write: the folder must be missing, empty, or
    marked as a previous demo cohort (the marker file, or a cohort.json from before the marker existed),
    and any case folder it would replace (not already complete) must hold only files synth wrote.
    """
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise DataError(out_dir, "exists and is not a folder; choose a new or empty folder for the demo cohort")
    try:
        entries = sorted(out_dir.iterdir())
    except OSError as exc:
        raise DataError(out_dir, f"cannot list the folder ({exc.strerror or exc})") from None
    if not entries:
        return False
    marked = (out_dir / MARKER).is_file()
    if not marked:
        try:
            legacy = read_json(out_dir / "cohort.json")
            marked = isinstance(legacy, dict) and "generator_version" in legacy
        except (OSError, ValueError):
            marked = False
    if not marked:
        # An interrupted run from before the marker existed: only synth's case folders and temporary files.
        foreign = [e.name for e in entries
                   if not (_HIDDEN_LEFTOVER.match(e.name) or (re.fullmatch(r"BraTS2021_\d{5}", e.name)
                                                              and e.is_dir() and _written_by_synth_case(e)))]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise DataError(out_dir, f"exists and holds files not written by `uad synth` ({shown}); refusing to "
                                     "write the demo cohort there: choose a new or empty folder")
    for case_id in case_ids:
        case_dir = out_dir / case_id
        if case_dir.exists() and not _is_complete(case_dir, seed) and not (case_dir.is_dir() and _written_by_synth_case(case_dir)):
            raise DataError(case_dir, "exists and was not written by `uad synth`; refusing to replace it: "
                                      "move it away or choose another folder for the demo cohort")
    return True


def _generate_into(out_dir: Path, case_ids: list[str], seed: int, workers: int | None, progress: bool) -> None:
    if not (out_dir / MARKER).exists():
        write_json(out_dir / MARKER, {"written_by": "uad synth", "generator_version": GENERATOR_VERSION})
    todo = [c for c in case_ids if not _is_complete(out_dir / c, seed)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    done = len(case_ids) - len(todo)
    with tqdm(total=len(case_ids), initial=done, desc="synthetic cases", disable=not progress) as bar:
        if workers == 1:
            for case_id in todo:
                _build_case(out_dir, case_id, seed)
                bar.update()
        else:
            # spawn: safe even when the caller holds threads (torch, a web server).
            with spawn_pool(workers) as pool:
                futures = submit_all(pool, _build_case, [(out_dir, case_id, seed) for case_id in todo])
                try:
                    for future in as_completed(futures):
                        future.result()
                        bar.update()
                except BaseException:
                    for future in futures:  # don't build the queued cases after a failure or Ctrl-C
                        future.cancel()
                    raise
    summary = {"n_cases": len(case_ids), "seed": seed, "generator_version": GENERATOR_VERSION}
    write_json(out_dir / "cohort.json", summary)


def cases_written(out_dir: str | Path) -> int:
    """Complete cases so far in ``out_dir``, or in the folder beside it where a new cohort is being built."""
    out_dir = Path(out_dir)
    folders = [out_dir] if out_dir.is_dir() else sorted(out_dir.parent.glob(f".{out_dir.name}.*.synth"))
    return max((sum(1 for p in f.iterdir() if p.is_dir() and re.fullmatch(r"BraTS2021_\d{5}", p.name))
                for f in folders if f.is_dir()), default=0)


def generate_cohort(
    out_dir: str | Path,
    n_cases: int = DEFAULT_CASES,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Generate cases ``BraTS2021_00000`` ... in ``out_dir``, in parallel; return their folders.

    ``out_dir`` must be missing, empty, or a cohort synth wrote before (anything else is refused with a
    DataError: synth never deletes or overwrites what it did not write). A new cohort is built in a hidden
    folder beside ``out_dir`` and renamed into place when complete. In an earlier cohort, complete case
    folders with the same seed and generator version are kept. ``cohort.json`` (n_cases, seed, generator
    version) is written last.
    """
    if n_cases < 1:
        raise ConfigError(f"n_cases must be >= 1, got {n_cases}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    _template_paths()  # fail here, with a clear error, rather than inside every worker
    out_dir = Path(out_dir)
    case_ids = [case_name(i) for i in range(n_cases)]
    existing = _check_out_dir(out_dir, case_ids, seed)
    if existing or out_dir.exists():
        # An earlier cohort is updated case by case (each case is written atomically); an existing empty
        # folder is filled in place (it may be a mount point, which cannot be renamed over).
        _generate_into(out_dir, case_ids, seed, workers, progress)
        return [out_dir / c for c in case_ids]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".synth", dir=out_dir.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the cohort is readable like any folder
        _generate_into(tmp, case_ids, seed, workers, progress)
        try:
            os.rename(tmp, out_dir)  # fails if something appeared at out_dir meanwhile: never replace it
        except OSError as exc:
            raise DataError(out_dir, f"appeared while the demo cohort was written, not replaced ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out_dir / c for c in case_ids]
