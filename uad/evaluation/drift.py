"""A label-free drift check: does a run's calibration still fit a new folder?

A run's thresholds were calibrated on the healthy slices of its validation patients. On another folder
(another scanner, protocol or site) the same maps may sit higher or lower everywhere, and then a threshold
that flagged 1 % of healthy pixels flags far more, or almost nothing. Without labels the healthy pixels of
the new folder are not known, but a glioma occupies a small share of a brain's pixels, so the bulk of the
new folder's brain-pixel scores is the healthy tissue's: their 90th percentile, held against the calibration's
healthy one, says whether the run's scale still holds there. (Not the median: with the positive residual about
half of all healthy pixels score exactly 0. Not the 75th percentile either: it sits systematically lower on a
whole folder than on the calibration's healthy slices, which are the brain's harder top and bottom slices
where the calibration patients have tumours; measured on the shipped demo checkpoints' own test patients, its
ratio was 0.63-0.80 while the 90th percentile's was 0.98-1.06. It is reported, not judged.)
"""

from __future__ import annotations

import math
from typing import Any

# A run's scale is taken to no longer fit when the new folder's 90th-percentile brain score differs from the
# calibration's healthy one by more than this factor, either way. Measured (README, "Thresholds at a new site"):
# 0.98-1.06 on the shipped demo checkpoints' own test patients, 1.84 for the demo-trained autoencoder on real scans.
DRIFT_FACTOR = 1.5


def check(calibration_quantiles: list[tuple[float, float]] | tuple, brain, thresholds: list[dict]) -> dict[str, Any]:
    """Compare a folder's brain-pixel scores (``brain``: a PixelAccumulator of every evaluated brain pixel) with the
    calibration's healthy quantiles; also the share of brain pixels each calibrated threshold flags there.

    Returns {"q75_ratio", "q90_ratio", "flagged": [{"rate", "flagged"}], "warning": str | None}; ratios are None
    when either side is missing (e.g. a calibration older than this check)."""
    quant = dict(calibration_quantiles or ())
    out: dict[str, Any] = {"q75_ratio": None, "q90_ratio": None, "flagged": [], "warning": None,
                           "factor": DRIFT_FACTOR, "n_pixels": int(brain.n_neg + brain.n_pos)}
    if out["n_pixels"]:
        for t in thresholds:
            thr = t.get("threshold")
            if thr is not None and math.isfinite(thr):
                out["flagged"].append({"rate": t["rate"], "flagged": brain.exceedance(thr, "all")})
    ratios = []
    for q, key in ((0.75, "q75_ratio"), (0.9, "q90_ratio")):
        ref = quant.get(q)
        if ref is None or not out["n_pixels"] or not ref > 0:
            continue
        here = brain.quantile(q, "all")
        out[key] = here / ref
        ratios.append((key, here / ref))
    off = [(k, r) for k, r in ratios if k == "q90_ratio" and not (1 / DRIFT_FACTOR <= r <= DRIFT_FACTOR)]
    if off:
        words = ", ".join(f"90th percentile × {r:.2f}" for k, r in off)
        out["warning"] = (f"the run's thresholds may not fit this folder: its brain-pixel scores differ from the run's "
                          f"healthy calibration ({words}; more than ×{DRIFT_FACTOR:g} either way). Calibrate on this "
                          f"folder (--calibration folder) or check the scans' contrast and preprocessing.")
    return out
