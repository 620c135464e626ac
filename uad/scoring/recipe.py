"""The scoring recipe: how a model's raw output becomes the maps, slice scores and thresholds every consumer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from uad.core.errors import ConfigError


@dataclass(frozen=True)
class PostprocessConfig:
    erode_brain: int = 3  # erode the brain mask by this many pixels (removes the bright rim at its border)
    median_size: int = 5  # median filter size in pixels (0 or 1 = none)
    median_3d: bool = False  # 5×5×5 across neighbouring slices instead of 5×5 in-plane
    min_component: int = 0  # after thresholding, drop connected components smaller than this (voxels)
    slice_score: str = "percentile"  # "percentile" of the map inside the brain, or "model" (the model's own score)
    score_percentile: float = 99.0

    def __post_init__(self) -> None:
        if self.slice_score not in ("percentile", "model"):
            raise ConfigError(f"slice_score must be 'percentile' or 'model', got {self.slice_score!r}")
        if not 0 < self.score_percentile <= 100:
            raise ConfigError(f"score_percentile must be in (0, 100], got {self.score_percentile}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PostprocessConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

