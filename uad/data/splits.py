"""Deterministic patient-level train/val/test splits.

Each patient lands in exactly one split. Training uses the healthy slices of train patients; the
healthy slices of val patients calibrate thresholds; test holds every slice of test patients.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from uad.core.errors import ConfigError

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


def check_case_lists(cases: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """Explicit patient lists → {"train", "val", "test"} sorted lists; a patient may be in one list only."""
    if not isinstance(cases, dict) or set(cases) - set(SPLITS):
        raise ConfigError(f"case lists must be a mapping with keys among {', '.join(SPLITS)}, got {cases!r}")
    out = {s: sorted(str(c) for c in cases.get(s, [])) for s in SPLITS}
    if not out["train"]:
        raise ConfigError("the case lists name no training case")
    seen: dict[str, str] = {}
    for s in SPLITS:
        for c in out[s]:
            if c in seen:
                raise ConfigError(f"case {c} is in both the {seen[c]} and the {s} list")
            seen[c] = s
    return out


def kfold_cases(case_ids: Sequence[str], folds: int = 5, seed: int = 0, val_cases: int = 2) -> list[dict[str, list[str]]]:
    """Patient-level k-fold splits: each patient is in exactly one fold's test list.

    Of the remaining patients, ``val_cases`` taken from the next fold form the validation list whose
    healthy slices pick the checkpoint and calibrate the label-free thresholds; the rest train. Taking
    them from the next fold rotates the validation patients across folds.
    """
    ids = sorted(set(case_ids))
    if folds < 2 or folds > len(ids):
        raise ConfigError(f"folds must be between 2 and the number of cases ({len(ids)}), got {folds}")
    rng = np.random.default_rng(seed)
    shuffled = [ids[i] for i in rng.permutation(len(ids))]
    parts = [sorted(shuffled[f::folds]) for f in range(folds)]
    out = []
    for f, test in enumerate(parts):
        n_val = min(max(val_cases, 0), len(ids) - len(test) - 1)
        val = parts[(f + 1) % folds][:n_val]
        train = [c for c in ids if c not in set(test) | set(val)]
        out.append({"train": train, "val": sorted(val), "test": test})
    return out
