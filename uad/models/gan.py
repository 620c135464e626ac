"""f-AnoGAN (Schlegl et al., Medical Image Analysis 2019): a WGAN-GP, then an izi_f encoder with G frozen."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from uad.core.errors import ConfigError
from uad.models.base import (
    AnomalyModel,
    AnomalyOutput,
    BaseChannels,
    ImageSize,
    InChannels,
    LatentDim,
    LossWeight,
    Range,
    Residual,
    residual_map,
)
from uad.models.blocks import (
    Discriminator,
    LatentDecoder,
    LatentEncoder,
    Upsample,
    frozen,
    to_image,
)
from uad.models.registry import register_model


@register_model("fanogan", "f-anogan")
class FAnoGAN(AnomalyModel):
    """Two phases chosen by training progress:

    1. ``progress < gan_fraction``: WGAN-GP. Generator G: z ~ N(0, I) → image (BatchNorm, sigmoid output);
       critic D without batch statistics (per-sample layer norm, required by the gradient penalty).
       Every training_step is one critic update on the batch; every ``n_critic``-th step (counted by the
       ``critic_steps`` buffer, so it survives checkpoints) also updates G on a fresh z batch. One critic
       update per real batch is how WGAN-GP itself iterates (each critic iteration sees new data).
    2. afterwards: encoder E only (G and D frozen, G in eval mode), izi_f loss
       ``mean((x − G(E(x)))²) + kappa · mean((f(x) − f(G(E(x))))²)``, f = the critic's last conv features.

    Score = image residual + kappa · feature residual per slice; map = the residual of x against G(E(x)) (``residual``: positive by default, see ``residual_map``).
    ``validation_loss`` is izi_f, which only means something once E trains, hence ``checkpoint_selectable``.
    The loss keys differ by phase; "generator" repeats the latest generator loss (0 before the first one).

    Options: latent_dim (128), base_channels (16), gan_fraction (0.8), n_critic (2), gp_weight (10),
    kappa (1.0), upsample (the generator's, "transpose" or "resize"; see ``ConvDecoder``).
    Optimizers: Adam betas (0.0, 0.9) for G and D as in the WGAN-GP paper, default betas for E.
    n_critic is 2, not the paper's 5: on short training budgets the generator, not the critic, is what
    lags (the README's results table has the comparison).
    """

    name = "gan"
    description = "f-AnoGAN: a WGAN-GP, then an encoder trained into its latent space (izi_f)"

    def __init__(self, in_channels: InChannels = 1, image_size: ImageSize = 128, latent_dim: LatentDim = 128,
                 base_channels: BaseChannels = 16, gan_fraction: Annotated[float, Range(0.05, 0.95)] = 0.8,
                 n_critic: Annotated[int, Range(1, 100)] = 2, gp_weight: LossWeight = 10.0, kappa: LossWeight = 1.0,
                 upsample: Upsample = "transpose", residual: Residual = "positive"):
        super().__init__(in_channels, image_size, latent_dim=latent_dim, base_channels=base_channels,
                         gan_fraction=gan_fraction, n_critic=n_critic, gp_weight=gp_weight, kappa=kappa,
                         upsample=upsample, residual=residual)
        if not 0.0 < gan_fraction < 1.0 or n_critic < 1:
            raise ConfigError(f"gan_fraction must be in (0, 1) and n_critic >= 1, got {gan_fraction}, {n_critic}")
        self.latent_dim, self.gan_fraction, self.n_critic = latent_dim, float(gan_fraction), int(n_critic)
        self.gp_weight, self.kappa = float(gp_weight), float(kappa)
        self.generator = LatentDecoder(in_channels, image_size, latent_dim, base_channels, "batch", upsample)
        self.critic = Discriminator(in_channels, image_size, base_channels, "layer", norm_first=False)
        self.encoder = LatentEncoder(in_channels, image_size, latent_dim, base_channels, "batch")
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))
        self._last_generator_loss = 0.0

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.0, 0.9)),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=lr, betas=(0.0, 0.9)),
            "encoder": torch.optim.Adam(self.encoder.parameters(), lr=lr),
        }

    def checkpoint_selectable(self, progress: float) -> bool:
        return progress > self.gan_fraction

    # -- phase 1: WGAN-GP -----------------------------------------------------------------------------
    def sample(self, n: int, device: torch.device) -> Tensor:
        return to_image(self.generator(torch.randn(n, self.latent_dim, device=device)))

    def _gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(mixed)[0].float().sum(), mixed, create_graph=True)
        return (grad.float().flatten(1).norm(dim=1) - 1.0).square().mean()

    def _gan_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        self.generator.train()
        b = x.shape[0]
        with torch.no_grad():
            fake = self.sample(b, x.device)

        def critic_loss() -> tuple[Tensor, Tensor, Tensor]:
            scores = self.critic(torch.cat([x, fake]))[0].float()  # per-sample norm: one batch = two batches
            wasserstein = scores[:b].mean() - scores[b:].mean()
            gp = self._gradient_penalty(x, fake)
            return -wasserstein + self.gp_weight * gp, wasserstein, gp

        critic_loss, wasserstein, gp = self.optimize(optimizers["critic"], critic_loss)
        self.critic_steps += 1
        if int(self.critic_steps) % self.n_critic == 0:
            with frozen(self.critic):
                gen_loss = self.optimize(optimizers["generator"],
                                         lambda: -self.critic(self.sample(b, x.device))[0].float().mean())
            self._last_generator_loss = gen_loss.item()
        return {"critic": critic_loss.item(), "wasserstein": wasserstein.item(), "gp": gp.item(),
                "generator": self._last_generator_loss}

    # -- phase 2: izi_f encoder -----------------------------------------------------------------------
    def izi_f(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction G(E(x)), image residual (B,), feature residual (B,))."""
        recon = to_image(self.generator(self.encoder(x)))
        f_real = self.critic(x)[1].float()
        f_recon = self.critic(recon)[1].float()
        img = (recon - x.float()).square().flatten(1).mean(dim=1)
        feat = (f_recon - f_real).square().mean(dim=1)
        return recon, img, feat

    def _encoder_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        self.generator.eval()  # G is a fixed mapping now: no batch statistics, no running-stat updates
        self.encoder.train()

        def izi_f_loss() -> tuple[Tensor, Tensor, Tensor]:
            _, img, feat = self.izi_f(x)
            return (img + self.kappa * feat).mean(), img, feat

        with frozen(self.generator, self.critic):
            loss, img, feat = self.optimize(optimizers["encoder"], izi_f_loss)
        return {"izi_f": loss.item(), "image": img.mean().item(), "feature": feat.mean().item()}

    def training_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer], progress: float) -> dict[str, float]:
        if progress < self.gan_fraction:
            return self._gan_step(x, optimizers)
        return self._encoder_step(x, optimizers)

    # -- inference ------------------------------------------------------------------------------------
    def reconstruct(self, x: Tensor) -> Tensor:
        return to_image(self.generator(self.encoder(x)))

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        _, img, feat = self.izi_f(x)
        return (img + self.kappa * feat).mean()

    @torch.no_grad()
    def anomaly_map(self, x: Tensor, residual: str | None = None, channels=None) -> AnomalyOutput:
        recon, img, feat = self.izi_f(x)
        amap = residual_map(x, recon, self.residual_kind(residual), channels)
        return AnomalyOutput(anomaly_map=amap, pred_score=img + self.kappa * feat, reconstruction=recon)
