"""What every anomaly model shares: a typed output and the contract the trainer relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Literal, Sequence, get_args

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Range:
    """The bounds of a numeric model option, inclusive, declared once on the constructor's signature:
    ``base_channels: Annotated[int, Range(1, 256)] = 16``. ``uad.models.registry`` reads it for the CLI's
    flags, the app's Train form, the training settings' check and the checkpoint loader's check."""

    low: float
    high: float


# Set by the data, not chosen as options: one channel per modality (uad.data.cases.MODALITIES), the working size.
InChannels = Annotated[int, Range(1, 4)]
ImageSize = Annotated[int, Range(32, 512)]
# Options several models share, bounded alike.
LatentDim = Annotated[int, Range(1, 4096)]
BaseChannels = Annotated[int, Range(1, 256)]
NoiseStd = Annotated[float, Range(0.0, 10.0)]
NoiseRes = Annotated[int, Range(1, 256)]  # and at most the image size (``blocks.check_noise``)
LossWeight = Annotated[float, Range(0.0, 1000.0)]


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
    * ``training_step(x, optimizers, progress)`` does the whole update for one batch and returns the losses
      as floats. Every update goes through ``self.optimize(optimizer, compute_loss)``: the loss is computed
      inside it, so under torchrun the forward pass runs inside that optimizer's DistributedDataParallel
      wrapper (see ``uad.train``). ``progress`` in [0, 1]
      is the fraction of training done; multi-phase models (f-AnoGAN) use it to switch phase.
    * ``validation_loss(x)`` is a scalar on healthy slices; the trainer keeps the checkpoint with the lowest.
    * ``anomaly_map(x, residual=None, channels=None)`` returns an :class:`AnomalyOutput`; models are in eval mode
      when it is called. ``residual`` (a scoring recipe's) overrides the model's own ``residual`` option;
      ``channels`` (input channel indices) limits the residual to those channels.
    """

    name: ClassVar[str] = ""
    # One line for people choosing a model (the app's Train page); the docstring's first line when empty.
    description: ClassVar[str] = ""
    trainable: ClassVar[bool] = True  # False for models built from trained ones (an ensemble)
    # Options whose default changed after checkpoints without them were written: the value such a record was
    # trained with. A record (checkpoint, run config, kept cross-validation fold) that lacks the key means it.
    recorded_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, in_channels: InChannels = 1, image_size: ImageSize = 128, **hparams: Any):
        super().__init__()
        if image_size < 32 or image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 and >= 32, got {image_size}")
        self.hparams: dict[str, Any] = {"in_channels": in_channels, "image_size": image_size, **hparams}
        # Every reconstruction model declares ``residual`` (with its default) on its own constructor.
        self.residual: str | None = self.check_residual(hparams["residual"]) if "residual" in hparams else None
        self.in_channels = in_channels
        self.image_size = image_size
        # Installed by the trainer under torchrun: one DistributedDataParallel per optimizer, keyed by id().
        self.data_parallel: dict[int, nn.Module] = {}
        # Installed by the trainer under float16 autocast: scales each loss so small gradients survive float16.
        self.grad_scaler: torch.amp.GradScaler | None = None

    @classmethod
    def check_parts(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """For models made of other models: check ``hparams`` (with each part's own checks) and return them.
        Models with plain options never override this; the registry checks those from the constructor."""
        return hparams

    # -- training -------------------------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=lr)}

    def training_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer], progress: float) -> dict[str, float]:
        raise NotImplementedError

    def optimize(self, optimizer: torch.optim.Optimizer, compute_loss: Callable[[], Any]) -> Any:
        """One update of ``optimizer``'s parameters; returns what ``compute_loss`` returned.

        ``compute_loss()`` returns the loss tensor, or a tuple whose first item is the loss (the rest are
        logged values). It is called here rather than by the model so that, under torchrun, it runs as the
        forward pass of the optimizer's DistributedDataParallel wrapper, which then averages the gradients
        across ranks during ``backward``. GAN models update several optimizers per batch, each through its
        own wrapper, so each backward is paired with exactly one DDP forward.
        """
        wrapper = self.data_parallel.get(id(optimizer))
        out = wrapper(compute_loss) if wrapper is not None else compute_loss()
        loss = out[0] if isinstance(out, tuple) else out
        optimizer.zero_grad(set_to_none=True)
        scaler = self.grad_scaler
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # float16: the step is skipped (and the scale lowered) when a scaled gradient overflowed
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return out

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

    @staticmethod
    def check_residual(kind: str) -> str:
        if kind not in RESIDUALS:
            from uad.core.errors import ConfigError

            raise ConfigError(f"residual must be one of {', '.join(RESIDUALS)}, got {kind!r}")
        return kind

    def residual_kind(self, override: str | None = None) -> str:
        """The residual a map is made with: ``override`` (a scoring recipe's) or the model's own option."""
        if override is not None:
            return self.check_residual(override)
        if self.residual is None:
            raise TypeError(f"{type(self).__name__} declares no residual option; pass one")
        return self.residual

    @torch.no_grad()
    def anomaly_map(self, x: Tensor, residual: str | None = None, channels: Sequence[int] | None = None) -> AnomalyOutput:
        """Default for reconstruction models: the residual (see :func:`residual_map`) of the model's own kind, or
        ``residual`` when a scoring recipe names one, averaged over ``channels`` (all by default); score = its mean."""
        recon = self.reconstruct(x)
        amap = residual_map(x, recon, self.residual_kind(residual), channels)
        return AnomalyOutput(anomaly_map=amap, pred_score=amap.flatten(1).mean(dim=1), reconstruction=recon)


Residual = Literal["abs", "positive"]  # the anomaly map; see residual_map
RESIDUALS = get_args(Residual)


def residual_map(x: Tensor, recon: Tensor, kind: str = "abs", channels: Sequence[int] | None = None) -> Tensor:
    """(B, C, H, W) image and reconstruction → (B, 1, H, W) residual averaged over ``channels`` (all by default).

    ``abs`` = |x − x̂|. ``positive`` = max(x − x̂, 0): only tissue brighter than the model expects counts.
    Gliomas and their oedema are hyperintense on FLAIR and T2, while a reconstruction's misses on healthy
    anatomy (sulci, ventricle edges) go both ways, so keeping one sign halves that false-positive floor.
    Only some channels: e.g. FLAIR and T2 of a four-sequence input, where oedema is bright (T1's misses only add noise).
    """
    if channels is not None:
        x, recon = x[:, list(channels)], recon[:, list(channels)]
    diff = x.float() - recon.float()
    diff = diff.clamp_min(0) if kind == "positive" else diff.abs()
    return diff.mean(dim=1, keepdim=True)
