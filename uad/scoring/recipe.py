"""The scoring recipe: how a model's output becomes the maps, slice scores and thresholds every consumer reads.

A recipe is data (frozen, hashable, JSON both ways, checked as strictly when read as when made):

* ``residual``: how a reconstruction becomes a map (``abs`` |x − x̂|, ``positive`` max(x − x̂, 0)); ``None``
  means the model's own choice, recorded in its checkpoint (baselines have none);
* ``post``: post-processing (brain-mask erosion, 2-D or 3-D median, minimum component size after
  thresholding) and the slice score.

A ``Calibration`` is a recipe's thresholds at the healthy false-positive rates of ``FPR_RATES``, with the
patients, dataset and weights they were calibrated on. Every evaluation records both; Explore, the HTML
report, ``uad score``, cross-validation and Compare read them from there, so a number, a map and a threshold
shown together always come from the same recipe (as anomalib attaches its post-processor to the model).

Torch-free: reading an evaluation's recipe never imports a model.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from uad.core.errors import ConfigError

# The one list of healthy false-positive rates: calibrated thresholds, Explore's presets, every table's columns.
FPR_RATES = (0.01, 0.05, 0.10)
CASE_RATE = 0.05  # the per-case table's threshold: where 5 % of healthy calibration pixels are flagged
RESIDUALS = ("abs", "positive")  # = uad.models.base.Residual's choices (a test holds them equal)
SLICE_SCORES = ("percentile", "model")
MAX_MEDIAN, MAX_ERODE, MAX_COMPONENT = 15, 32, 1_000_000


def rate_label(rate: float) -> str:
    """'1 %', '5 %', '10 %': how a healthy-FPR rate is written everywhere."""
    return f"{float(rate) * 100:g} %"


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


@dataclass(frozen=True)
class PostprocessConfig:
    """What happens to a raw map before it is thresholded or scored (see ``uad.scoring.postprocess``)."""

    erode_brain: int = 3  # erode the brain mask by this many pixels (removes the bright rim at its border)
    median_size: int = 5  # median filter size in pixels (0 or 1 = none; odd)
    median_3d: bool = False  # size³ across neighbouring slices instead of size² in-plane
    min_component: int = 0  # after thresholding, drop 3-D connected components smaller than this (voxels)
    slice_score: str = "percentile"  # "percentile" of the map inside the brain, or "model" (the model's own score)
    score_percentile: float = 99.0

    def __post_init__(self) -> None:
        _int("erode_brain", self.erode_brain, 0, MAX_ERODE)
        _int("median_size", self.median_size, 0, MAX_MEDIAN)
        if self.median_size > 1 and self.median_size % 2 == 0:
            raise ConfigError(f"median_size must be odd (or 0 for none), got {self.median_size}")
        if not isinstance(self.median_3d, bool):
            raise ConfigError(f"median_3d must be true or false, got {self.median_3d!r}")
        _int("min_component", self.min_component, 0, MAX_COMPONENT)
        if self.slice_score not in SLICE_SCORES:
            raise ConfigError(f"slice_score must be one of {', '.join(SLICE_SCORES)}, got {self.slice_score!r}")
        p = self.score_percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 100:
            raise ConfigError(f"score_percentile must be a number in (0, 100], got {p!r}")
        object.__setattr__(self, "score_percentile", float(p))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "PostprocessConfig":
        """Strict: a field of the wrong type or out of bounds is a ConfigError; unknown keys are refused."""
        if not isinstance(d, dict):
            raise ConfigError(f"post-processing must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown post-processing option(s): {', '.join(map(str, unknown))}")
        return cls(**d)

    def describe(self) -> str:
        parts = [f"brain mask eroded {self.erode_brain} px" if self.erode_brain else "brain mask not eroded"]
        k = self.median_size
        parts.append(("no median" if k <= 1 else f"{k}×{k}×{k} median" if self.median_3d else f"{k}×{k} median"))
        if self.min_component > 1:
            parts.append(f"components < {self.min_component} voxels dropped")
        parts.append("slice score = the model's own" if self.slice_score == "model"
                     else f"slice score = {self.score_percentile:g}th percentile in the brain")
        return ", ".join(parts)


@dataclass(frozen=True)
class ScoringRecipe:
    """Residual + post-processing: everything that turns a model's output into maps and slice scores."""

    residual: str | None = None  # None: the model's own (its checkpoint's ``residual`` option)
    post: PostprocessConfig = field(default_factory=PostprocessConfig)
    channels: tuple[str, ...] | None = None  # the input sequences the residual averages over (None: every one)

    def __post_init__(self) -> None:
        if self.residual is not None and self.residual not in RESIDUALS:
            raise ConfigError(f"residual must be one of {', '.join(RESIDUALS)}, got {self.residual!r}")
        if self.channels is not None:
            if isinstance(self.channels, str) or not self.channels or not all(isinstance(c, str) and c for c in self.channels) \
                    or len(set(self.channels)) != len(self.channels):
                raise ConfigError(f"residual channels must be distinct sequence names, got {self.channels!r:.80}")
            object.__setattr__(self, "channels", tuple(self.channels))
        if not isinstance(self.post, PostprocessConfig):
            raise ConfigError("post must be a PostprocessConfig")

    def for_model(self, model_residual: str | None) -> "ScoringRecipe":
        """The recipe with the residual a model will actually use filled in (its own unless this one names one)."""
        return self if self.residual is not None or model_residual is None else replace(self, residual=model_residual)

    def to_dict(self) -> dict[str, Any]:
        d = {"residual": self.residual, "postprocess": self.post.to_dict()}
        if self.channels is not None:  # absent when every channel counts: older recipes keep their keys
            d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ScoringRecipe":
        if not isinstance(d, dict) or set(d) - {"residual", "postprocess", "channels"}:
            raise ConfigError(f"a scoring recipe is {{'residual', 'postprocess', 'channels'}}, got {d!r:.200}")
        channels = d.get("channels")
        if channels is not None and not isinstance(channels, list):
            raise ConfigError(f"residual channels must be a list of sequence names, got {channels!r:.80}")
        return cls(residual=d.get("residual"), post=PostprocessConfig.from_dict(d.get("postprocess", {})),
                   channels=tuple(channels) if channels is not None else None)

    @property
    def key(self) -> str:
        """A short stable id (folder and cache names): equal recipes, equal keys."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def describe(self) -> str:
        residual = {"abs": "|x − x̂|", "positive": "positive residual max(x − x̂, 0)"}.get(self.residual or "", "the model's own residual")
        on = f" on {'+'.join(self.channels)} only" if self.channels else ""
        return f"{residual}{on}; {self.post.describe()}"


@dataclass(frozen=True)
class Threshold:
    """A threshold calibrated so that ``rate`` of the healthy calibration pixels score at or above it."""

    rate: float  # the nominal healthy false-positive rate (one of FPR_RATES)
    value: float | None  # None when it could not be calibrated (no healthy pixels)
    calibration_fpr: float | None = None  # the rate actually reached on the calibration pixels (<= rate)

    @property
    def label(self) -> str:
        return rate_label(self.rate)


def _number(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ConfigError(f"expected a finite number or null, got {x!r:.80}")
    return float(x)


@dataclass(frozen=True)
class Calibration:
    """A recipe's label-free thresholds and where they come from (healthy slices of ``cases`` in ``dataset``)."""

    recipe: ScoringRecipe
    thresholds: tuple[Threshold, ...]
    cases: tuple[str, ...] = ()
    dataset: tuple[tuple[str, str], ...] = ()  # DatasetRef.to_dict() items: id, label, root
    weights_sha256: str | None = None  # the checkpoint scored (None for baselines)
    source: str = "run"  # "run": the run's own validation patients; "folder": the evaluated folder's own
    healthy_quantiles: tuple[tuple[float, float], ...] = ()  # (q, value) of the healthy calibration pixels: drift

    def threshold(self, rate: float) -> float | None:
        t = next((t for t in self.thresholds if abs(t.rate - rate) < 1e-9), None)
        return t.value if t is not None else None

    @property
    def dataset_id(self) -> str:
        return dict(self.dataset).get("id", "")

    def presets(self) -> list[tuple[float, float]]:
        """(rate, threshold) for every threshold that could be calibrated."""
        return [(t.rate, t.value) for t in self.thresholds if t.value is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(),
                "thresholds": [{"rate": t.rate, "threshold": t.value, "calibration_fpr": t.calibration_fpr}
                               for t in self.thresholds],
                "cases": list(self.cases), "dataset": dict(self.dataset), "weights_sha256": self.weights_sha256,
                "source": self.source, "healthy_quantiles": [list(q) for q in self.healthy_quantiles]}

    @classmethod
    def from_dict(cls, d: Any) -> "Calibration":
        if not isinstance(d, dict):
            raise ConfigError("a calibration must be a JSON object")
        thresholds = d.get("thresholds")
        cases = d.get("cases", [])
        dataset = d.get("dataset", {})
        if not isinstance(thresholds, list) or not all(isinstance(t, dict) for t in thresholds):
            raise ConfigError("calibration thresholds must be a list of objects")
        if not isinstance(cases, list) or not all(isinstance(c, str) for c in cases):
            raise ConfigError("calibration cases must be a list of case ids")
        if not isinstance(dataset, dict) or not all(isinstance(v, str) for v in dataset.values()):
            raise ConfigError("calibration dataset must be an object of strings")
        sha = d.get("weights_sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise ConfigError(f"calibration weights_sha256 must be 64 hex digits, got {sha!r:.80}")
        if d.get("source", "run") not in ("run", "folder"):
            raise ConfigError(f"calibration source must be 'run' or 'folder', got {d.get('source')!r:.40}")
        out = []
        for t in thresholds:
            rate = _number(t.get("rate"))
            if rate is None or not 0 < rate < 1:
                raise ConfigError(f"a calibrated rate must lie in (0, 1), got {t.get('rate')!r:.40}")
            out.append(Threshold(rate, _number(t.get("threshold")), _number(t.get("calibration_fpr"))))
        quantiles = d.get("healthy_quantiles", [])
        if not isinstance(quantiles, list) or not all(isinstance(q, list) and len(q) == 2 for q in quantiles):
            raise ConfigError("calibration healthy_quantiles must be a list of [q, value] pairs")
        pairs = tuple((_number(q), _number(v)) for q, v in quantiles)
        if any(q is None or not 0 < q < 1 or v is None for q, v in pairs):
            raise ConfigError("calibration healthy_quantiles must hold quantiles in (0, 1) and finite values")
        return cls(ScoringRecipe.from_dict(d.get("recipe")), tuple(out), tuple(cases), tuple(sorted(dataset.items())),
                   sha, d.get("source", "run"), pairs)
