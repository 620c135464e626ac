"""A training run's settings, checked once before anything starts (``check_config``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from uad.checkpoints import record as ckpt_record
from uad.core.errors import ConfigError, UADError
from uad.data.preprocess import PreprocessConfig
from uad.data.splits import DEFAULT_RATIOS, check_case_lists, parse_ratios
from uad.models import canonical_name, check_model_options, create_model


@dataclass
class TrainConfig:
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
    model_options: dict[str, Any] = field(default_factory=dict)
    # Explicit patient lists {"train": [...], "val": [...], "test": [...]} instead of ratios + seed
    # (cross-validation folds); every listed case must exist in the dataset.
    cases: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        self.model = canonical_name(self.model)
        self.modalities = tuple(self.modalities)
        self.split_ratios = parse_ratios(self.split_ratios)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.lr}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max minutes must be > 0, got {self.max_minutes}")
        if self.cases is not None:
            self.cases = check_case_lists(self.cases)
        if not 0 <= self.seed < 2**63:  # torch.manual_seed overflows above that
            raise ConfigError(f"seed must be >= 0 and < 2**63, got {self.seed}")
        if self.num_workers < 0:
            raise ConfigError(f"number of data-loader workers must be >= 0, got {self.num_workers}")
        if not self.modalities:
            raise ConfigError("choose at least one modality")
        self.model_options = check_model_options(self.model, dict(self.model_options))

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(modalities=self.modalities, image_size=self.image_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["split_ratios"] = list(self.split_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def check_config(config: TrainConfig) -> None:
    """Raise a ConfigError for what the trainer would refuse, short of the data: everything ``TrainConfig``
    checks (run when it is built), the model hyper-parameters against the checkpoint bounds, and the model
    built from them on the meta device (so its own checks run, and no memory is allocated).

    The app and ``uad train`` call this before a run folder exists, so a bad value leaves nothing behind."""
    from uad.core.errors import CheckpointError

    config = TrainConfig.from_dict(config.to_dict())  # re-run __post_init__: the fields may have been set since
    hparams = {"in_channels": len(config.modalities), "image_size": config.image_size, **config.model_options}
    try:
        ckpt_record.check_hparams(hparams)
    except CheckpointError as exc:
        raise ConfigError(exc.reason.replace("hparams ", "model option ", 1)) from None
    try:
        with torch.device("meta"):
            create_model(config.model, **hparams)
    except UADError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"model {config.model}: {exc}") from None

