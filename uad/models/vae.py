"""Convolutional variational autoencoder (Kingma & Welling 2014) with the autoencoder's conv blocks."""

from __future__ import annotations

import torch
from torch import Tensor

from uad.core.errors import ConfigError
from uad.models.base import (
    AnomalyModel,
    BaseChannels,
    ImageSize,
    InChannels,
    LatentDim,
    LossWeight,
    Residual,
)
from uad.models.blocks import (
    LOSSES,
    NORMS,
    LatentDecoder,
    LatentEncoder,
    Loss,
    Norm,
    check_choice,
    recon_loss,
    to_image,
)
from uad.models.registry import register_model


@register_model()
class VAE(AnomalyModel):
    """Encoder → (mu, logvar) → z = mu + sigma·eps → decoder → sigmoid; the map uses the posterior mean.

    Loss = recon + kl_weight · KL / (C·H·W), recon being the per-pixel mean error and KL the divergence
    summed over latent dims (batch mean). Dividing KL by the pixel count keeps the balance independent of
    image size; with ``loss="mse"`` this is the negative ELBO of a Gaussian likelihood with variance
    sigma² = kl_weight / 2, multiplied by 2 sigma² / (C·H·W): kl_weight 0.01 ≈ sigma 0.07 on [0, 1] images.

    Options: latent_dim (128), base_channels (16), norm ("batch"), loss ("mse"; "l1" = Laplace likelihood),
    kl_weight (0.01).
    """

    name = "vae"
    description = "variational autoencoder (reconstructs from the posterior mean)"

    def __init__(self, in_channels: InChannels = 1, image_size: ImageSize = 128, latent_dim: LatentDim = 128,
                 base_channels: BaseChannels = 16, norm: Norm = "batch", loss: Loss = "mse", kl_weight: LossWeight = 0.01,
                 residual: Residual = "positive"):
        super().__init__(in_channels, image_size, latent_dim=latent_dim, base_channels=base_channels, norm=norm,
                         loss=loss, kl_weight=kl_weight, residual=residual)
        check_choice("norm", norm, NORMS)
        self.loss_kind = check_choice("loss", loss, LOSSES)
        if kl_weight < 0:
            raise ConfigError(f"kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = float(kl_weight)
        self.latent_dim = latent_dim
        self.encoder = LatentEncoder(in_channels, image_size, 2 * latent_dim, base_channels, norm)
        self.decoder = LatentDecoder(in_channels, image_size, latent_dim, base_channels, norm)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp() finite early in training

    def decode(self, z: Tensor) -> Tensor:
        return to_image(self.decoder(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)[0])

    def loss(self, x: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(total, recon, kl); ``sample=False`` decodes the mean (validation)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        rec = recon_loss(self.decode(z), x, self.loss_kind)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()
        return rec + self.kl_weight * kl / x[0].numel(), rec, kl

    def training_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer], progress: float) -> dict[str, float]:
        total, rec, kl = self.optimize(optimizers["model"], lambda: self.loss(x, sample=True))
        return {"loss": total.item(), "recon": rec.item(), "kl": kl.item()}

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        return self.loss(x, sample=False)[0]
