"""Convolutional building blocks shared by the AE, VAE, f-AnoGAN and GANomaly (no network is written twice).

Every conv network here has four stride-2 stages, so a ``H × W`` image becomes an ``H/16 × W/16`` map
(4 × 4 at 64, 8 × 8 at 128, 16 × 16 at 256); stage ``i`` has ``base_channels · 2**i`` channels.
Conv weights and activations use the channels-last layout: ~15-30 % faster training on CPU (oneDNN) and
the layout cuDNN prefers for bf16; outputs are made contiguous again in :func:`to_image`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uad.core.errors import ConfigError

STAGES = 4
# Options with fixed choices: the Literal annotates the constructors (uad.models.model_options reads it)
# and the tuple checks values.
Norm = Literal["batch", "group", "layer", "none"]
Loss = Literal["l1", "mse"]
Upsample = Literal["transpose", "resize"]
NORMS, LOSSES, UPSAMPLES = get_args(Norm), get_args(Loss), get_args(Upsample)


def stage_channels(base_channels: int) -> list[int]:
    return [base_channels * 2**i for i in range(STAGES)]


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def make_norm(kind: str, channels: int) -> nn.Module:
    """``layer`` normalises each sample over (C, H, W): no batch statistics, so it is safe in a WGAN-GP critic."""
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class ConvEncoder(nn.Sequential):
    """Image (B, C, H, W) → feature map (B, channels[-1], H/16, W/16): conv 4×4 stride 2 → norm → LeakyReLU.

    ``norm_first=False`` leaves the first stage unnormalised (as DCGAN and WGAN-GP critics do). A critic
    needs that: a per-sample norm right after the first (linear) conv divides out the image's overall
    contrast, so the critic could not see that a generator's samples are too bright.
    """

    def __init__(self, in_channels: int, base_channels: int = 16, norm: str = "batch", norm_first: bool = True):
        layers: list[nn.Module] = []
        c = in_channels
        for i, out in enumerate(stage_channels(base_channels)):
            stage_norm = norm if norm_first or i > 0 else "none"
            # A conv bias is redundant in front of a normalisation layer.
            layers += [nn.Conv2d(c, out, 4, 2, 1, bias=stage_norm == "none"), make_norm(stage_norm, out),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = out
        super().__init__(*layers)
        self.out_channels = c
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


class ConvDecoder(nn.Sequential):
    """Feature map (B, channels[-1], h, w) → logits (B, out_channels, 16h, 16w), doubling the size per stage.

    ``upsample="transpose"``: 4×4 stride-2 transposed convs (DCGAN). ``"resize"``: nearest-neighbour ×2,
    then a 3×3 conv; every output pixel then gets the same number of kernel taps, which avoids the
    checkerboard pattern transposed convs can print into a generator's samples (Odena et al., Distill 2016).
    Returns logits (no activation) so each model applies its sigmoid in float32 under autocast.
    """

    def __init__(self, out_channels: int, base_channels: int = 16, norm: str = "batch", upsample: str = "transpose"):
        check_choice("upsample", upsample, UPSAMPLES)
        chans = stage_channels(base_channels)[::-1] + [out_channels]
        layers: list[nn.Module] = []
        for i in range(STAGES):
            last = i == STAGES - 1
            bias = last or norm == "none"
            if upsample == "transpose":
                layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=bias))
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chans[i], chans[i + 1], 3, 1, 1, bias=bias)]
            if not last:
                layers += [make_norm(norm, chans[i + 1]), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.in_channels = chans[0]
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


class UNet(nn.Module):
    """Image (B, C, H, W) → logits (B, out_channels, H, W): the ConvEncoder's stages with skip connections.

    Each decoder stage upsamples (4×4 stride-2 transposed conv), concatenates the encoder feature of the
    same size and fuses them with a 3×3 conv; the last conv also sees the input image itself. The skips
    carry the anatomy's fine detail past the bottleneck, so a denoising U-Net reconstructs real sulci and
    ventricle edges sharply and its residual is left to what the coarse training noise taught it to heal
    (Kascenas et al., MIDL 2022). Without denoising training it would learn to copy its input.
    No convolution runs at full resolution except the last (in + base channels → out), which keeps
    training within a small factor of the plain autoencoder's speed on a CPU. ``full_res="lean"`` makes that
    stage cheaper still: the upsampling to full resolution gives half the channels, with a bias and no norm.
    """

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 16, norm: str = "batch",
                 full_res: str = "norm"):
        super().__init__()
        chans = stage_channels(base_channels)
        self.down = nn.ModuleList()
        c = in_channels
        for out in chans:
            self.down.append(nn.Sequential(nn.Conv2d(c, out, 4, 2, 1, bias=norm == "none"), make_norm(norm, out),
                                           nn.LeakyReLU(0.2, inplace=True)))
            c = out
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(STAGES - 1, 0, -1):  # H/16 → H/8 → H/4 → H/2, joined by the encoder's H/8, H/4, H/2
            self.up.append(nn.Sequential(nn.ConvTranspose2d(c, chans[i - 1], 4, 2, 1, bias=norm == "none"),
                                         make_norm(norm, chans[i - 1]), nn.ReLU(inplace=True)))
            self.fuse.append(nn.Sequential(nn.Conv2d(2 * chans[i - 1], chans[i - 1], 3, 1, 1, bias=norm == "none"),
                                           make_norm(norm, chans[i - 1]), nn.ReLU(inplace=True)))
            c = chans[i - 1]
        if full_res == "lean":  # half the channels at full resolution and no norm there: the stage a step spends most on
            top = max(1, c // 2)
            self.last_up = nn.Sequential(nn.ConvTranspose2d(c, top, 4, 2, 1), nn.ReLU(inplace=True))
        else:
            top = c
            self.last_up = nn.Sequential(nn.ConvTranspose2d(c, c, 4, 2, 1, bias=norm == "none"), make_norm(norm, c),
                                         nn.ReLU(inplace=True))
        self.head = nn.Conv2d(top + in_channels, out_channels, 3, 1, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        skips, h = [], x
        for stage in self.down:
            h = stage(h)
            skips.append(h)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            h = fuse(torch.cat([up(h), skip], dim=1))
        # The head is one conv over [last_up(h), x] stacked on channels, computed as the sum of the convs over
        # each part with the matching slices of its weight: the same function and weights, but no
        # full-resolution concatenated copy and no gradient computed for the input image. oneDNN is slow on
        # that 17 → 1 channel conv's backward; this made a whole training step ~15-20 % faster on the CPU.
        h = self.last_up(h)
        c, w = h.shape[1], self.head.weight
        return F.conv2d(h, w[:, :c], self.head.bias, padding=1) + F.conv2d(x, w[:, c:], padding=1)


class LatentEncoder(nn.Module):
    """Image → latent vector (B, out_dim) through a ConvEncoder and one dense layer."""

    def __init__(self, in_channels: int, image_size: int, out_dim: int, base_channels: int = 16, norm: str = "batch"):
        super().__init__()
        self.features = ConvEncoder(in_channels, base_channels, norm)
        side = image_size // 2**STAGES
        self.fc = nn.Linear(self.features.out_channels * side * side, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


class LatentDecoder(nn.Module):
    """Latent vector (B, latent_dim) → image logits (B, out_channels, H, W): dense layer, then a ConvDecoder."""

    def __init__(self, out_channels: int, image_size: int, latent_dim: int, base_channels: int = 16, norm: str = "batch",
                 upsample: str = "transpose"):
        super().__init__()
        self.side = image_size // 2**STAGES
        self.body = ConvDecoder(out_channels, base_channels, norm, upsample)
        self.fc = nn.Linear(latent_dim, self.body.in_channels * self.side * self.side)
        self.act = nn.Sequential(make_norm(norm, self.body.in_channels), nn.ReLU(inplace=True))

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], self.body.in_channels, self.side, self.side)
        return self.body(self.act(h))


class Discriminator(nn.Module):
    """Image → (one logit/score per sample (B,), features (B, F)); the features are the last conv map, used
    for feature matching (GANomaly) and the izi_f feature residual (f-AnoGAN)."""

    def __init__(self, in_channels: int, image_size: int, base_channels: int = 16, norm: str = "layer",
                 norm_first: bool = True):
        super().__init__()
        self.features = ConvEncoder(in_channels, base_channels, norm, norm_first)
        side = image_size // 2**STAGES
        self.head = nn.Linear(self.features.out_channels * side * side, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x).flatten(1)
        return self.head(f).squeeze(1), f


def to_image(logits: Tensor) -> Tensor:
    """Sigmoid in float32: outputs live in [0, 1] like the inputs, whatever autocast chose for the convs."""
    return torch.sigmoid(logits.float()).contiguous()


def recon_loss(recon: Tensor, x: Tensor, kind: str = "l1") -> Tensor:
    """Per-pixel mean L1 or squared error, in float32."""
    diff = recon.float() - x.float()
    return (diff.abs() if kind == "l1" else diff.square()).mean()


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (conv weights N(0, 0.02), norm scales N(1, 0.02)), as GANomaly's code uses."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Gradients still flow *through* these modules, but none are computed *for* their parameters."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def coarse_noise(x: Tensor, std: float, resolution: int, generator: torch.Generator | None = None) -> Tensor:
    """Low-resolution Gaussian noise, bilinearly upsampled to the image size and kept inside the brain (x > 0).

    Kascenas et al. (MIDL 2022): coarse noise makes the denoising task resemble a smooth lesion, so the
    network learns to "heal" blobs rather than to remove pixel noise.
    """
    b, c, h, w = x.shape
    noise = torch.randn(b, c, resolution, resolution, device=x.device, generator=generator) * std
    noise = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    return noise * (x > 0)


def check_noise(noise_std: float, noise_res: int, image_size: int) -> tuple[float, int]:
    """The denoising options of a model, validated: (noise_std >= 0, noise_res in [1, image_size])."""
    if noise_std < 0 or not 1 <= noise_res <= image_size:
        raise ConfigError(f"noise_std must be >= 0 and noise_res in [1, {image_size}], got {noise_std}, {noise_res}")
    return float(noise_std), int(noise_res)


def noisy_input(x: Tensor, noise_std: float, noise_res: int) -> Tensor:
    """A denoising model's training input: ``x`` plus :func:`coarse_noise`, or ``x`` itself when noise_std is 0."""
    return x + coarse_noise(x, noise_std, noise_res) if noise_std > 0 else x
