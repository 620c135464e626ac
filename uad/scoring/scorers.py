"""Scorers: a trained model or a training-free baseline, each turning preprocessed slices into raw maps.

The same pipeline serves every scorer, so models and baselines are always compared on the same slices
and pixels (see ``uad.scoring.maps``)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from uad.core.errors import ConfigError

BASELINES = ("intensity", "brain_area")


class Scorer(Protocol):
    name: str

    def raw(self, images: np.ndarray, brain: np.ndarray, brain_pixels: np.ndarray, residual: str | None = None,
            channels: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(S, C, H, W) images → raw maps (S, H, W), own scores (S,), reconstruction or None.

        ``residual`` and ``channels`` (the input sequences the residual averages over) are the scoring recipe's
        (None: the model's own, every channel); baselines have no residual and ignore both."""
        ...

    def model_residual(self) -> str | None:
        """The residual this scorer uses when a recipe names none (None for baselines)."""
        ...


class ModelScorer:
    """Anomaly maps from a trained model, computed in batches."""

    def __init__(self, model, device: str | None = None, batch_size: int = 64, keep_reconstruction: bool = False,
                 modalities: tuple[str, ...] | None = None):
        from uad.core.devices import pick_device

        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.name = model.name
        self.modalities = tuple(modalities) if modalities is not None else None  # the input channels, by name
        self.batch_size = batch_size
        self.keep_reconstruction = keep_reconstruction

    def model_residual(self) -> str | None:
        return self.model.residual

    @classmethod
    def of(cls, checkpoint, **kwargs) -> "ModelScorer":
        """The scorer of a loaded checkpoint (``uad.checkpoints.weights.Checkpoint``), knowing its input channels."""
        return cls(checkpoint.model, modalities=tuple(checkpoint.preprocess.modalities), **kwargs)

    def channel_indices(self, channels: tuple[str, ...] | None) -> list[int] | None:
        if channels is None:
            return None
        if self.modalities is None:
            raise ConfigError("a recipe that names residual channels needs the scorer's input channels (ModelScorer.of)")
        missing = [c for c in channels if c not in self.modalities]
        if missing:
            raise ConfigError(f"residual channels {', '.join(missing)} are not among the model's inputs "
                              f"({', '.join(self.modalities)})")
        return [self.modalities.index(c) for c in channels]

    def raw(self, images, brain, brain_pixels, residual=None, channels=None):
        import torch

        idx = self.channel_indices(channels)
        maps, scores, recons = [], [], []
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.asarray(images[s:s + self.batch_size], dtype=np.float32)).to(self.device)
                out = self.model.anomaly_map(x, residual=residual, channels=idx)
                maps.append(out.anomaly_map[:, 0].float().cpu().numpy())
                scores.append(out.pred_score.float().cpu().numpy())
                if self.keep_reconstruction and out.reconstruction is not None:
                    recons.append(out.reconstruction.float().cpu().numpy())
        recon = np.concatenate(recons) if recons else None
        return np.concatenate(maps), np.concatenate(scores), recon


class IntensityBaseline:
    """The normalised image itself (first channel: FLAIR by default) as the anomaly map; no training."""

    name = "intensity"

    def model_residual(self) -> None:
        return None

    def raw(self, images, brain, brain_pixels, residual=None, channels=None):
        maps = np.asarray(images[:, 0], dtype=np.float32)
        return maps, maps.reshape(len(maps), -1).mean(axis=1), None


class BrainAreaBaseline:
    """Slice score = number of brain pixels; the map is that number (scaled to [0, 1]) on every brain pixel.

    It shows how much of a slice-level AUROC is explained by slice position alone.
    """

    name = "brain_area"

    def model_residual(self) -> None:
        return None

    def raw(self, images, brain, brain_pixels, residual=None, channels=None):
        frac = np.asarray(brain_pixels, np.float32) / max(float(np.max(brain_pixels)), 1.0)
        maps = brain.astype(np.float32) * frac[:, None, None]
        return maps, np.asarray(brain_pixels, np.float32), None


def baseline(name: str) -> Scorer:
    if name == "intensity":
        return IntensityBaseline()
    if name == "brain_area":
        return BrainAreaBaseline()
    raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")

