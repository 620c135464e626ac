"""The preprocessing settings (``PreprocessConfig``), in a module of their own so that reading them (a
checkpoint's record, a run's listing) imports no image library. The steps are in ``uad.data.preprocess``."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from uad.core.errors import ConfigError
from uad.data.cases import check_modalities

MAX_CROP_MARGIN = 256


@dataclass(frozen=True)
class PreprocessConfig:
    modalities: tuple[str, ...] = ("flair",)
    image_size: int = 128
    # Per-volume normalisation inside the brain: clip to these percentiles of brain voxels, scale to [0, 1].
    percentile_low: float = 1.0
    percentile_high: float = 99.0
    # An axial slice is kept when its brain area is at least this fraction of the volume's largest one.
    min_brain_fraction: float = 0.1
    crop_margin: int = 4  # pixels kept around the brain's bounding box before resizing

    def __post_init__(self) -> None:
        # Types first, as strictly when read back from a record as when set: a string or NaN must not get
        # as far as a comparison (or pass it, as NaN passes every one).
        if not isinstance(self.modalities, (list, tuple)) or not all(isinstance(m, str) for m in self.modalities):
            raise ConfigError(f"modalities must be a list of names, got {self.modalities!r}")
        for name in ("image_size", "crop_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name.replace('_', ' ')} must be a whole number, got {value!r}")
        for name in ("percentile_low", "percentile_high", "min_brain_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))  # 1 and 1.0 give one cache key
        object.__setattr__(self, "modalities", check_modalities(self.modalities))
        if not 64 <= self.image_size <= 256 or self.image_size % 16:
            raise ConfigError(f"image size must be a multiple of 16 between 64 and 256, got {self.image_size}")
        if not 0 <= self.percentile_low < self.percentile_high <= 100:
            raise ConfigError(f"need 0 <= percentile_low < percentile_high <= 100, got {self.percentile_low}, {self.percentile_high}")
        if not 0 <= self.min_brain_fraction < 1:
            raise ConfigError(f"min_brain_fraction must be in [0, 1), got {self.min_brain_fraction}")
        if not 0 <= self.crop_margin <= MAX_CROP_MARGIN:
            raise ConfigError(f"crop margin must be between 0 and {MAX_CROP_MARGIN} pixels, got {self.crop_margin}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        """The config a dict records (unknown keys ignored, missing ones at their defaults); ConfigError
        for a value of the wrong type or out of bounds."""
        if not isinstance(d, dict):
            raise ConfigError(f"preprocessing settings must be a JSON object, got {type(d).__name__}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("modalities"), list):
            known["modalities"] = tuple(known["modalities"])
        return cls(**known)

    def key(self) -> str:
        """Short stable hash: two configs with the same key produce the same slices."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
