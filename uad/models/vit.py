"""ViT autoencoder with context dropout (the MSc project's best model), written MAE-style."""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uad.core.errors import ConfigError
from uad.models.base import (
    AnomalyModel,
    ImageSize,
    InChannels,
    NoiseRes,
    NoiseStd,
    Range,
    Residual,
)
from uad.models.blocks import (
    LOSSES,
    Loss,
    check_choice,
    check_noise,
    noisy_input,
    to_image,
)
from uad.models.registry import register_model

TEST_TIME_SEED = 0


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) → (B, N, p·p·C), tokens in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, p: int, c: int, grid: int) -> Tensor:
    """(B, N, p·p·C) → (B, C, grid·p, grid·p); inverse of :func:`patchify` for square images."""
    b = tokens.shape[0]
    x = tokens.reshape(b, grid, grid, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, grid * p, grid * p)


def random_token_mask(b: int, n: int, ratio: float, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """(B, N) bool, exactly round(ratio·N) True per row: the first k of a random permutation (argsort of noise)."""
    k = round(ratio * n)
    order = torch.rand(b, n, device=device, generator=generator).argsort(dim=1)
    mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :k], True)


def sincos_2d(grid: int, dim: int) -> Tensor:
    """(1, grid², dim) fixed 2D sine-cosine position code; used to initialise the learned embedding."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    parts = [f(pos.reshape(-1, 1) * freqs) for pos in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).unsqueeze(0)


class Block(nn.Module):
    """Pre-norm transformer block (ViT). Dropout after the attention projection, inside and after the MLP;
    none on the attention probabilities (timm's default), which saves ~10 % of a CPU training step."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, int(dim * mlp_ratio)), nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + F.dropout(self.proj(attn), self.dropout, self.training)
        hidden = F.dropout(F.gelu(self.fc1(self.norm2(x))), self.dropout, self.training)
        return x + F.dropout(self.fc2(hidden), self.dropout, self.training)


class ConvPatchDecoder(nn.Module):
    """"Linear + transposed-conv" decoder (the MSc project's design): tokens → feature grid → log2(p) 2× upsamplings."""

    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        layers: list[nn.Module] = []
        c = dim
        for i in range(int(math.log2(patch))):
            last = 2 ** (i + 1) == patch
            out = out_channels if last else max(c // 2, 16)
            layers.append(nn.ConvTranspose2d(c, out, 4, 2, 1))
            if not last:
                layers.append(nn.ReLU(inplace=True))
            c = out
        self.up = nn.Sequential(*layers)

    def forward(self, tokens: Tensor, grid: int) -> Tensor:
        h = self.proj(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)
        return self.up(h)


Decoder = Literal["linear", "conv"]  # see ViTAE's docstring
DECODERS = get_args(Decoder)


@register_model("vit_ae", "vitae")
class ViTAE(AnomalyModel):
    """Patch embedding (conv, stride = patch) → learned positions (sin-cos init) → pre-norm transformer
    encoder → pixels. Context dropout: in training, exactly round(context_dropout · N) random patch tokens
    per sample are replaced by a learned mask token before the positions are added, so the network must
    fill them in from context (MAE's masking, kept at 20 %).

    Denoising (default, our addition): as in the autoencoder (Kascenas et al. 2022), training inputs get
    coarse noise and the loss compares with the clean slice, so the network learns to remove blob-like
    intensity changes instead of copying them; ``noise_std=0`` is the MSc project's ViT.

    Scoring by in-painting (option ``inpaint_groups``): the patches are split into K disjoint groups (a
    fixed random partition); one pass per group hides that group, and each patch's reconstruction is taken
    from the pass that hid it, so every patch is predicted from its context alone, as dropped ones are in
    training. It helped a ViT trained without noise but not the denoising one (README, results), so it is
    off by default.

    Options:
      patch_size (16; must divide image_size, power of 2 for decoder="conv"), embed_dim (256), depth (4),
      num_heads (8), mlp_ratio (4.0), dropout (0.1), context_dropout (0.2),
      decoder ("linear"): one linear layer per token to its p·p·C pixels, then unpatchify; "conv" = the MSc
        project's linear + transposed-conv decoder (slower; kept for comparison),
      refine (False): add a light 3×3 conv residual on the output logits (smooths patch seams),
      loss ("l1"), masked_weight (1.0): loss weight of dropped patches relative to kept ones (1 = plain
        mean over all pixels; > 1 stresses in-filling as MAE does),
      inpaint_groups (0): K > 1 scores by in-painting as above (deterministic; costs K passes); 0 = plain.
      noise_std (0.2), noise_res (16): coarse-noise denoising training as above (0 = off).
      test_time_drops (0): K > 0 (with inpaint_groups 0) makes reconstruct/anomaly_map average K
        reconstructions, each with its own random drop pattern from a generator seeded identically on every
        call (deterministic).
    The MSc configuration is ``create_model("vit", decoder="conv", noise_std=0)`` (its other values are
    our defaults).
    """

    name = "vit"
    description = "ViT autoencoder with context dropout (patches hidden during training)"

    def __init__(self, in_channels: InChannels = 1, image_size: ImageSize = 128,
                 patch_size: Annotated[int, Range(2, 64)] = 16, embed_dim: Annotated[int, Range(8, 2048)] = 256,
                 depth: Annotated[int, Range(1, 32)] = 4, num_heads: Annotated[int, Range(1, 64)] = 8,
                 mlp_ratio: Annotated[float, Range(0.25, 16.0)] = 4.0, dropout: Annotated[float, Range(0.0, 0.9)] = 0.1,
                 context_dropout: Annotated[float, Range(0.0, 0.9)] = 0.2, decoder: Decoder = "linear",
                 refine: bool = False, loss: Loss = "l1", masked_weight: Annotated[float, Range(0.0, 100.0)] = 1.0,
                 inpaint_groups: Annotated[int, Range(0, 256)] = 0,
                 # each drop costs a forward pass per slice at scoring time: a hostile checkpoint must not buy minutes
                 test_time_drops: Annotated[int, Range(0, 16)] = 0,
                 noise_std: NoiseStd = 0.2, noise_res: NoiseRes = 16, residual: Residual = "positive"):
        super().__init__(in_channels, image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, context_dropout=context_dropout,
                         decoder=decoder, refine=refine, loss=loss, masked_weight=masked_weight,
                         inpaint_groups=inpaint_groups, test_time_drops=test_time_drops, noise_std=noise_std,
                         noise_res=noise_res, residual=residual)
        check_choice("decoder", decoder, DECODERS)
        self.loss_kind = check_choice("loss", loss, LOSSES)
        if image_size % patch_size or (decoder == "conv" and (patch_size < 2 or patch_size & (patch_size - 1))):
            raise ConfigError(f"patch_size {patch_size} must divide image_size {image_size} "
                              "(and be a power of 2 for the conv decoder)")
        if embed_dim % num_heads or embed_dim % 4:
            raise ConfigError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads} and by 4")
        if not 0.0 <= context_dropout < 1.0 or test_time_drops < 0 or inpaint_groups < 0:
            raise ConfigError("context_dropout must be in [0, 1), inpaint_groups and test_time_drops >= 0, "
                              f"got {context_dropout}, {inpaint_groups}, {test_time_drops}")
        if inpaint_groups > 1 and test_time_drops > 0:
            raise ConfigError("choose one test-time scheme: inpaint_groups or test_time_drops (set the other to 0)")
        if inpaint_groups > (image_size // patch_size) ** 2:
            raise ConfigError(f"inpaint_groups {inpaint_groups} exceeds the number of patches")
        self.patch, self.grid = patch_size, image_size // patch_size
        self.context_dropout, self.masked_weight = float(context_dropout), float(masked_weight)
        self.test_time_drops, self.inpaint_groups = int(test_time_drops), int(inpaint_groups)
        self.noise_std, self.noise_res = check_noise(noise_std, noise_res, image_size)

        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)
        self.pos_embed = nn.Parameter(sincos_2d(self.grid, embed_dim))
        self.mask_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        if decoder == "linear":
            self.head: nn.Module = nn.Linear(embed_dim, patch_size * patch_size * in_channels)
        else:
            self.head = ConvPatchDecoder(embed_dim, patch_size, in_channels)
        self.refine = (nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(16, in_channels, 3, padding=1)) if refine else None)
        for m in self.blocks.modules():  # ViT/MAE initialisation of the transformer's linear layers
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, drop_ratio: float = 0.0, generator: torch.Generator | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(reconstruction in [0, 1], token mask (B, N) or None when nothing was dropped).

        Tokens to hide: ``mask`` (B, N) if given, else a random ``drop_ratio`` of them.
        """
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if mask is None and drop_ratio > 0:
            mask = random_token_mask(x.shape[0], tokens.shape[1], drop_ratio, x.device, generator)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        h = self.norm(self.blocks(tokens + self.pos_embed.to(tokens.dtype)))
        if isinstance(self.head, ConvPatchDecoder):
            logits = self.head(h, self.grid)
        else:
            logits = unpatchify(self.head(h), self.patch, self.in_channels, self.grid)
        if self.refine is not None:
            logits = logits + self.refine(logits)
        return to_image(logits), mask

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        # Without context dropout the mask token is never used. Leaving it out keeps every optimized parameter
        # in every loss, which DistributedDataParallel (find_unused_parameters=False) relies on.
        params = [p for n, p in self.named_parameters() if self.context_dropout > 0 or n != "mask_token"]
        return {"model": torch.optim.Adam(params, lr=lr)}

    def training_loss(self, x: Tensor) -> Tensor:
        """Patch-wise reconstruction error with context dropout; dropped patches weighted by masked_weight."""
        inp = noisy_input(x, self.noise_std, self.noise_res)
        recon, mask = self(inp, self.context_dropout)
        diff = recon - x.float()
        err = patchify(diff.abs() if self.loss_kind == "l1" else diff.square(), self.patch).mean(dim=2)  # (B, N)
        weight = torch.ones_like(err) if mask is None else 1.0 + (self.masked_weight - 1.0) * mask.float()
        return (err * weight).sum() / weight.sum()

    def training_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer], progress: float) -> dict[str, float]:
        loss = self.optimize(optimizers["model"], lambda: self.training_loss(x))
        return {"loss": loss.item()}

    def reconstruct(self, x: Tensor) -> Tensor:
        if self.training:
            return self(x)[0]
        if self.inpaint_groups > 1:
            return self.inpaint(x, self.inpaint_groups)
        if self.test_time_drops == 0:
            return self(x)[0]
        gen = torch.Generator(device=x.device).manual_seed(TEST_TIME_SEED)
        total = sum(self(x, self.context_dropout, gen)[0] for _ in range(self.test_time_drops))
        return total / self.test_time_drops

    def inpaint(self, x: Tensor, groups: int) -> Tensor:
        """Each patch reconstructed by the pass that hid it; patches split into ``groups`` fixed disjoint sets."""
        n = self.grid * self.grid
        order = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_TIME_SEED)).to(x.device)
        out = None
        for k in range(groups):
            hidden = torch.zeros(n, dtype=torch.bool, device=x.device)
            hidden[order[k::groups]] = True
            recon = self(x, mask=hidden.expand(x.shape[0], n))[0]
            patches = patchify(recon, self.patch)
            out = patches * hidden[None, :, None] if out is None else torch.where(hidden[None, :, None], patches, out)
        return unpatchify(out, self.patch, self.in_channels, self.grid)

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        diff = self.reconstruct(x) - x.float()
        return (diff.abs() if self.loss_kind == "l1" else diff.square()).mean()
