"""What every anomaly model shares: a typed output and the contract the trainer relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class AnomalyOutput:
    """Per-pixel anomaly scores and one score per slice (higher = more anomalous)."""

    anomaly_map: Tensor  # (B, 1, H, W)
    pred_score: Tensor  # (B,)
    reconstruction: Tensor | None = None  # (B, C, H, W) where the model reconstructs


class AnomalyModel(nn.Module):
    """Base class. Subclasses set ``name``, build their networks and implement the hooks below.

    Contract with the trainer (``uad.train``):

    * ``hparams`` holds every constructor argument, so ``create_model(name, **hparams)`` rebuilds it.
    * ``configure_optimizers(lr)`` returns named optimizers (names are used in checkpoints).
    * ``training_step(x, optimizers, progress)`` does the whole update for one batch (losses, backward
      through ``self.optimize``, optimizer steps) and returns the losses as floats. ``progress`` in [0, 1]
      is the fraction of training done; multi-phase models (f-AnoGAN) use it to switch phase.
    * ``validation_loss(x)`` is a scalar on healthy slices; the trainer keeps the checkpoint with the lowest.
    * ``anomaly_map(x)`` returns an :class:`AnomalyOutput`; models are in eval mode when it is called.
    """

    name: ClassVar[str] = ""

    def __init__(self, in_channels: int = 1, image_size: int = 128, **hparams: Any):
        super().__init__()
        if image_size < 32 or image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 and >= 32, got {image_size}")
        self.hparams: dict[str, Any] = {"in_channels": in_channels, "image_size": image_size, **hparams}
        self.in_channels = in_channels
        self.image_size = image_size
        # Installed by the trainer under torch.distributed: averages gradients across ranks.
        self.grad_sync: Callable[[list[nn.Parameter]], None] | None = None

    # -- training -------------------------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=lr)}

    def training_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer], progress: float) -> dict[str, float]:
        raise NotImplementedError

    def optimize(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """zero_grad → backward → (cross-rank gradient average) → step, for the optimizer's parameters only."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_sync is not None:
            self.grad_sync([p for group in optimizer.param_groups for p in group["params"]])
        optimizer.step()

    def checkpoint_selectable(self, progress: float) -> bool:
        """Whether the validation loss at this point of training may pick the best checkpoint.

        True for single-phase models; f-AnoGAN's reconstruction means nothing until its encoder trains.
        """
        return True

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        return (self.reconstruct(x) - x).abs().mean()

    # -- inference ------------------------------------------------------------------------------------
    def reconstruct(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def anomaly_map(self, x: Tensor) -> AnomalyOutput:
        """Default for reconstruction models: channel-mean absolute residual; score = its mean."""
        recon = self.reconstruct(x)
        amap = (x - recon).abs().mean(dim=1, keepdim=True)
        return AnomalyOutput(anomaly_map=amap, pred_score=amap.flatten(1).mean(dim=1), reconstruction=recon)
