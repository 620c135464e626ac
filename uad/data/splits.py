"""Deterministic patient-level train/val/test splits.

Each patient lands in exactly one split. Training uses the healthy slices of train patients; the
healthy slices of val patients calibrate thresholds; test holds every slice of test patients.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from uad.errors import ConfigError

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.7, 0.1, 0.2)


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """'0.7,0.1,0.2' (or a sequence) → validated (train, val, test) ratios summing to 1."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ConfigError(f"split ratios must be three numbers like 0.7,0.1,0.2, got {text!r}") from None
    # not finite first: every comparison with NaN is False, so NaN would pass the checks below
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or any(v < 0 for v in values) or values[0] <= 0:
        raise ConfigError(f"split ratios must be three finite non-negative numbers with train > 0, got {text!r}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must sum to 1, got {text!r} (sum {sum(values):g})")
    return values[0], values[1], values[2]


def split_cases(case_ids: Sequence[str], ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0) -> dict[str, list[str]]:
    """Shuffle the sorted case ids with ``seed`` and cut them by ``ratios``.

    The result depends only on the set of ids, the ratios and the seed. Every split with a positive
    ratio gets at least one case when there are enough cases; train always gets at least one.
    """
    train_r, val_r, test_r = parse_ratios(ratios)
    ids = sorted(set(case_ids))
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    n_val = int(round(n * val_r))
    n_test = int(round(n * test_r))
    if n >= 3:
        n_val = max(n_val, 1 if val_r > 0 else 0)
        n_test = max(n_test, 1 if test_r > 0 else 0)
    while n_val + n_test >= n and (n_val or n_test):  # keep at least one training case
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test:n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val:]),
    }
