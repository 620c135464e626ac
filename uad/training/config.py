"""A training run's settings, checked once before anything starts (``check_config``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from uad.core.errors import ConfigError, UADError
from uad.data.preprocess_config import PreprocessConfig
from uad.data.splits import DEFAULT_RATIOS, check_case_lists, parse_ratios
from uad.models import canonical_name, check_hparams, check_model_options, create_model

# Far above any sensible setting; a bound keeps a mistyped or hostile config.json from asking for years.
MAX_EPOCHS, MAX_BATCH, MAX_WORKERS, MAX_MINUTES = 1_000_000, 65_536, 256, 1e7


@dataclass(frozen=True)
class TrainConfig:
    """A training run's settings: a value (frozen, hashable, JSON both ways), checked when it is made and when
    it is read back, so ``uad train --config FILE`` and the app start from one validated object."""

    model: str
    data: str | None = None  # dataset folder; None = demo cohort
    modalities: tuple[str, ...] = ("flair",)
    image_size: int = 128
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    max_minutes: float | None = None  # stop (and count as completed) when this much time has passed
    split_ratios: tuple[float, float, float] = DEFAULT_RATIOS
    seed: int = 0
    device: str | None = None  # None = cuda, then mps, then cpu
    num_workers: int = 0  # DataLoader workers; reading the memory-mapped cache is cheap
    # Hold the training slices in one tensor on the training device and draw batches there (trains to the
    # same weights as the loader). None = on CUDA when they fit in half its free memory, off elsewhere.
    data_on_device: bool | None = None
    model_options: Mapping[str, Any] = field(default_factory=dict)
    # Explicit patient lists {"train": [...], "val": [...], "test": [...]} instead of ratios + seed
    # (cross-validation folds); every listed case must exist in the dataset.
    cases: Mapping[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        # Every field is checked for type and bounds, as strictly when read back (resume, --config FILE) as when set
        # by the CLI or the app; NaN and infinity are refused (NaN passes every comparison).
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.model, str):
            raise ConfigError(f"model must be a model name, got {self.model!r}")
        put("model", canonical_name(self.model))
        if self.data is not None and not isinstance(self.data, str):
            raise ConfigError(f"data must be a folder name, got {self.data!r}")
        if self.device is not None and not isinstance(self.device, str):
            raise ConfigError(f"device must be a name like cpu or cuda, got {self.device!r}")
        if isinstance(self.modalities, str) or not self.modalities:
            raise ConfigError("choose at least one modality")
        put("modalities", PreprocessConfig(modalities=tuple(self.modalities), image_size=self.image_size).modalities)
        put("split_ratios", parse_ratios(self.split_ratios))
        for name, low, high, words in (("epochs", 1, MAX_EPOCHS, "epochs"), ("batch_size", 1, MAX_BATCH, "batch size"),
                                       ("seed", 0, 2**63 - 1, "seed"),  # torch.manual_seed overflows above 2**63
                                       ("num_workers", 0, MAX_WORKERS, "number of data-loader workers")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{words} must be a whole number between {low} and {high}, got {value!r}")
        if not (_number(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if self.max_minutes is not None and not (_number(self.max_minutes) and 0 < self.max_minutes <= MAX_MINUTES):
            raise ConfigError(f"max minutes must be a finite number > 0, got {self.max_minutes!r}")
        if self.cases is not None:
            put("cases", MappingProxyType({k: tuple(v) for k, v in check_case_lists(dict(self.cases)).items()}))
        if self.data_on_device is not None and not isinstance(self.data_on_device, bool):
            raise ConfigError(f"data on device must be true, false or null (automatic), got {self.data_on_device!r}")
        if not isinstance(self.model_options, Mapping):
            raise ConfigError(f"model options must be a mapping, got {self.model_options!r}")
        put("model_options", MappingProxyType(check_model_options(self.model, dict(self.model_options))))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self.to_dict() == other.to_dict()

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(modalities=self.modalities, image_size=self.image_size)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A new config with ``changes`` applied (and checked)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["modalities"] = list(self.modalities)
        d["split_ratios"] = list(self.split_ratios)
        d["model_options"] = dict(self.model_options)
        d["cases"] = {k: list(v) for k, v in self.cases.items()} if self.cases is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "TrainConfig":
        """Strict: not an object, an unknown field, or a bad value is a ConfigError naming it."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training configuration must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(map(str, unknown))}")
        if "model" not in d:
            raise ConfigError("a training configuration needs a model")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"training configuration: {exc}") from None

    @classmethod
    def read(cls, path: str | Path) -> "TrainConfig":
        """A configuration written by ``write`` (``uad train --config FILE``), checked as it is read."""
        from uad.core import fileio

        try:
            raw = fileio.read_json(path)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a readable JSON configuration ({exc})") from None
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def write(self, path: str | Path) -> Path:
        from uad.core import fileio

        fileio.write_json(path, self.to_dict())
        return Path(path)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_config(config: TrainConfig) -> None:
    """Raise a ConfigError for what the trainer would refuse, short of the data: everything ``TrainConfig``
    checks (run when it is built), the model hyper-parameters against the bounds the model declares (the
    same check a checkpoint's record passes when loaded), and the model built from them on the meta device
    (so its own checks run, and no memory is allocated).

    The app, ``uad train`` and ``train`` itself call this before a run folder exists, so a bad value leaves
    nothing behind."""
    hparams = check_hparams(config.model, {"in_channels": len(config.modalities), "image_size": config.image_size,
                                           **config.model_options})
    try:
        with torch.device("meta"):
            create_model(config.model, **hparams)
    except UADError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"model {config.model}: {exc}") from None

