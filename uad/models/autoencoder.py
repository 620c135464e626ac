"""Convolutional autoencoder, optionally a denoising one with coarse noise (Kascenas et al., MIDL 2022)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from uad.models.base import (
    AnomalyModel,
    BaseChannels,
    ImageSize,
    InChannels,
    LatentDim,
    NoiseRes,
    NoiseStd,
    Residual,
)
from uad.models.blocks import (
    LOSSES,
    NORMS,
    ConvDecoder,
    ConvEncoder,
    LatentDecoder,
    LatentEncoder,
    Loss,
    Norm,
    UNet,
    check_choice,
    check_noise,
    make_norm,
    noisy_input,
    recon_loss,
    to_image,
)
from uad.models.registry import register_model

Bottleneck = Literal["spatial", "dense", "unet"]
BOTTLENECKS = get_args(Bottleneck)
FullRes = Literal["norm", "lean"]


@register_model("ae")
class Autoencoder(AnomalyModel):
    """x → encoder → bottleneck → decoder → sigmoid; map = |x − x̂|.

    The defaults train a denoising U-Net with coarse noise (Kascenas et al., MIDL 2022) and score the
    positive residual; the original MSc project's dense autoencoder is ``bottleneck="dense", noise_std=0,
    residual="abs"``, and the previous default is ``bottleneck="spatial", residual="abs"``. The README's results say what
    each choice measured.

    Options:
      latent_dim (128): channels of the (H/16 × W/16) code map; with ``bottleneck="dense"`` the size of
        the flat code instead (the MSc project's latent 128).
      base_channels (16): encoder widths are 16-32-64-128 (lean enough for ~150+ slices/s training on 2 CPU
        cores at 128²); 32 gives 32-64-128-256.
      bottleneck ("unet"): "spatial" = fully convolutional 1×1-conv code, which keeps position and
        localises better; "dense" = flatten + linear code (a classic AE, blurrier); "unet" = no code but
        skip connections from every encoder stage (:class:`~uad.models.blocks.UNet`), which reconstructs
        real anatomy far more sharply; ``latent_dim`` is unused then.
      norm ("batch"): batch | group | layer | none.
      loss ("l1"): "l1" matches the |x − x̂| anomaly map and blurs less than "mse".
      noise_std (0.2): > 0 turns on denoising training: coarse Gaussian noise of this std, drawn at
        ``noise_res`` × ``noise_res`` and upsampled bilinearly, is added inside the brain (x > 0) to the
        input during training only; the loss compares the output with the *clean* image. Not clipped, so
        dark tissue can be pushed below 0 as well as bright tissue above 1. Without it a spatial
        autoencoder learns to copy its input, anomalies included.
      noise_res (16): resolution of the coarse noise grid.
      full_res ("lean"): the U-Net's full-resolution stage: "lean" = half of base_channels channels, no norm (a
        cheaper training step), "norm" = base_channels channels with the norm (the earlier default: a checkpoint
        that does not record ``full_res`` was trained with it); the README's results say what each measured.
      residual ("positive"): the anomaly map, "abs" = |x − x̂| or "positive" = max(x − x̂, 0), for lesions that
        are brighter than healthy tissue (FLAIR, T2); see :func:`~uad.models.base.residual_map`.
    """

    name = "autoencoder"
    recorded_defaults = {"full_res": "norm"}  # the default before "lean" replaced it
    description = "convolutional autoencoder (by default a denoising U-Net; dense and spatial codes too)"

    def __init__(self, in_channels: InChannels = 1, image_size: ImageSize = 128, latent_dim: LatentDim = 128,
                 base_channels: BaseChannels = 16, bottleneck: Bottleneck = "unet", norm: Norm = "batch", loss: Loss = "l1",
                 noise_std: NoiseStd = 0.2, noise_res: NoiseRes = 16, residual: Residual = "positive",
                 full_res: FullRes = "lean"):
        super().__init__(in_channels, image_size, latent_dim=latent_dim, base_channels=base_channels,
                         bottleneck=bottleneck, norm=norm, loss=loss, noise_std=noise_std, noise_res=noise_res,
                         residual=residual, full_res=full_res)
        check_choice("bottleneck", bottleneck, BOTTLENECKS)
        check_choice("norm", norm, NORMS)
        check_choice("full_res", full_res, get_args(FullRes))
        self.loss_kind = check_choice("loss", loss, LOSSES)
        self.noise_std, self.noise_res = check_noise(noise_std, noise_res, image_size)
        if bottleneck == "unet":
            self.encoder = UNet(in_channels, in_channels, base_channels, norm, full_res)
            self.decoder = nn.Identity()
        elif bottleneck == "dense":
            self.encoder: nn.Module = LatentEncoder(in_channels, image_size, latent_dim, base_channels, norm)
            self.decoder: nn.Module = LatentDecoder(in_channels, image_size, latent_dim, base_channels, norm)
        else:
            enc = ConvEncoder(in_channels, base_channels, norm)
            dec = ConvDecoder(in_channels, base_channels, norm)
            self.encoder = nn.Sequential(enc, nn.Conv2d(enc.out_channels, latent_dim, 1))
            self.decoder = nn.Sequential(nn.Conv2d(latent_dim, dec.in_channels, 1, bias=False),
                                         make_norm(norm, dec.in_channels), nn.ReLU(inplace=True), dec)

    def forward(self, x: Tensor) -> Tensor:
        return to_image(self.decoder(self.encoder(x)))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self(x)

    def training_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer], progress: float) -> dict[str, float]:
        inp = noisy_input(x, self.noise_std, self.noise_res)
        loss = self.optimize(optimizers["model"], lambda: recon_loss(self(inp), x, self.loss_kind))
        return {"loss": loss.item()}

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        return recon_loss(self(x), x, self.loss_kind)
