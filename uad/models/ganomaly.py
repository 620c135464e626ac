"""GANomaly (Akcay et al., ACCV 2018): encoder → decoder → encoder, scored in latent space."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from uad.models.base import (
    AnomalyModel,
    AnomalyOutput,
    BaseChannels,
    ImageSize,
    InChannels,
    LatentDim,
    LossWeight,
    NoiseRes,
    NoiseStd,
    Range,
    Residual,
    residual_map,
)
from uad.models.blocks import (
    Discriminator,
    LatentDecoder,
    LatentEncoder,
    check_noise,
    dcgan_init,
    frozen,
    noisy_input,
    recon_loss,
    to_image,
)
from uad.models.registry import register_model


@register_model()
class GANomaly(AnomalyModel):
    """Generator x → z = GE(x) → x̂ = GD(z) → ẑ = E2(x̂); DCGAN discriminator D (BatchNorm).

    Generator loss = w_adv · mean((f(x) − f(x̂))²) (feature matching on D's last conv features)
                   + w_con · mean|x − x̂| + w_enc · mean((z − ẑ)²).
    Discriminator loss = BCE(D(x), 1) / 2 + BCE(D(x̂), 0) / 2; when it collapses below ``reinit_below`` D is
    re-initialised (and its Adam state cleared), as the authors' code does, so G keeps a useful signal.
    Score = mean((z − ẑ)²) over latent dims; map = the residual of x against x̂ (``residual``: positive by default, see ``residual_map``).
    ``validation_loss`` = w_con · L1 + w_enc · latent L2 (the adversarial term depends on a moving D).

    Options: latent_dim (128), base_channels (16), w_adv (1), w_con (50), w_enc (1), reinit_below (1e-5),
    noise_std (0.2), noise_res (16). Adam betas (0.5, 0.999) as in the paper.

    Denoising (our addition, ``noise_std > 0``): in training the generator's input gets the autoencoder's
    coarse noise (Kascenas et al. 2022) and every loss compares with the clean slice (the README's results
    say what it measured); ``noise_std=0`` is the paper's GANomaly.
    """

    name = "ganomaly"
    description = "GANomaly: encoder-decoder-encoder GAN, scored in latent space"

    def __init__(self, in_channels: InChannels = 1, image_size: ImageSize = 128, latent_dim: LatentDim = 128,
                 base_channels: BaseChannels = 16, w_adv: LossWeight = 1.0, w_con: LossWeight = 50.0,
                 w_enc: LossWeight = 1.0, reinit_below: Annotated[float, Range(0.0, 1.0)] = 1e-5,
                 noise_std: NoiseStd = 0.2, noise_res: NoiseRes = 16, residual: Residual = "positive"):
        super().__init__(in_channels, image_size, latent_dim=latent_dim, base_channels=base_channels, w_adv=w_adv,
                         w_con=w_con, w_enc=w_enc, reinit_below=reinit_below, noise_std=noise_std, noise_res=noise_res,
                         residual=residual)
        self.noise_std, self.noise_res = check_noise(noise_std, noise_res, image_size)
        self.w_adv, self.w_con, self.w_enc, self.reinit_below = float(w_adv), float(w_con), float(w_enc), float(reinit_below)
        self.encoder1 = LatentEncoder(in_channels, image_size, latent_dim, base_channels, "batch")
        self.decoder = LatentDecoder(in_channels, image_size, latent_dim, base_channels, "batch")
        self.encoder2 = LatentEncoder(in_channels, image_size, latent_dim, base_channels, "batch")
        self.discriminator = Discriminator(in_channels, image_size, base_channels, "batch")
        dcgan_init(self)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        gen = [p for m in (self.encoder1, self.decoder, self.encoder2) for p in m.parameters()]
        return {
            "generator": torch.optim.Adam(gen, lr=lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999)),
        }

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x̂, z, ẑ); latents in float32."""
        z = self.encoder1(x).float()
        recon = to_image(self.decoder(z))
        return recon, z, self.encoder2(recon).float()

    def training_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer], progress: float) -> dict[str, float]:
        inp = noisy_input(x, self.noise_std, self.noise_res)

        def generator_loss() -> tuple[Tensor, ...]:
            recon, z, z_hat = self(inp)
            adv = (self.discriminator(recon)[1].float() - self.discriminator(x)[1].float()).square().mean()
            con = recon_loss(recon, x, "l1")
            enc = (z - z_hat).square().mean()
            return self.w_adv * adv + self.w_con * con + self.w_enc * enc, adv, con, enc, recon.detach()

        def discriminator_loss() -> Tensor:
            # Real and fake in separate passes so BatchNorm never mixes their statistics (DCGAN practice).
            real_logit = self.discriminator(x)[0].float()
            fake_logit = self.discriminator(recon)[0].float()
            return 0.5 * (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                          + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))

        with frozen(self.discriminator):
            g_loss, adv, con, enc, recon = self.optimize(optimizers["generator"], generator_loss)
        d_loss = self.optimize(optimizers["discriminator"], discriminator_loss)
        if self._mean_across_ranks(d_loss.detach()) < self.reinit_below:
            self._reinit_discriminator(optimizers["discriminator"])
        return {"generator": g_loss.item(), "adversarial": adv.item(), "contextual": con.item(), "latent": enc.item(),
                "discriminator": d_loss.item()}

    def _distributed(self) -> bool:
        return bool(self.data_parallel) and dist.is_available() and dist.is_initialized()

    def _mean_across_ranks(self, value: Tensor) -> float:
        """Every rank must take the same re-initialisation decision."""
        if self._distributed():
            value = value.clone()
            dist.all_reduce(value)
            value /= dist.get_world_size()
        return float(value)

    def _reinit_discriminator(self, optimizer: torch.optim.Optimizer) -> None:
        dcgan_init(self.discriminator)
        optimizer.state.clear()
        if self._distributed():
            for t in self.discriminator.state_dict().values():
                dist.broadcast(t, src=0)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self(x)[0]

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        recon, z, z_hat = self(x)
        return self.w_con * recon_loss(recon, x, "l1") + self.w_enc * (z - z_hat).square().mean()

    @torch.no_grad()
    def anomaly_map(self, x: Tensor, residual: str | None = None, channels=None) -> AnomalyOutput:
        recon, z, z_hat = self(x)
        amap = residual_map(x, recon, self.residual_kind(residual), channels)
        return AnomalyOutput(anomaly_map=amap, pred_score=(z - z_hat).square().mean(dim=1), reconstruction=recon)
