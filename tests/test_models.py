"""Model contract tests: every registered model trains, maps, rebuilds from hparams and behaves in eval."""

from __future__ import annotations

import json
import math

import pytest
import torch

from uad.core.errors import ConfigError
from uad.models import (
    AnomalyModel,
    AnomalyOutput,
    canonical_name,
    create_model,
    list_models,
    model_class,
)
from uad.models.blocks import coarse_noise
from uad.models.vit import patchify, random_token_mask, unpatchify

MODELS = ["autoencoder", "vae", "gan", "ganomaly", "vit"]
REGISTERED = list_models()  # the contract tests cover any model registered later too
SMALL = {"vit": {"embed_dim": 128, "depth": 2}, **{m: {"latent_dim": 64} for m in ("autoencoder", "vae", "gan", "ganomaly")}}
SHAPES = [(1, 64), (4, 64), (1, 128)]  # 4 channels only at 64 to keep the file fast


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # One thread: these batches are tiny, and idle-spinning thread pools make a shared CPU far slower.
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def brain_batch(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random intensities in [0, 1] inside a centred disc, exactly 0 outside (like a skull-stripped slice)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = (xx**2 + yy**2 < 0.7).float()
    return torch.rand(b, c, size, size, generator=g) * disc


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    """Whether any tensor in ``before`` (parameters, or the whole state dict) differs now."""
    now = module.state_dict()
    return any(not torch.equal(v, now[k]) for k, v in before.items())


# -- registry ---------------------------------------------------------------------------------------------
def test_registry_names_and_aliases():
    assert set(MODELS) <= set(REGISTERED)
    for alias, name in {"ae": "autoencoder", "AE": "autoencoder", "fanogan": "gan", "f-anogan": "gan",
                        "vit_ae": "vit", "vitae": "vit", " VAE ": "vae", "ganomaly": "ganomaly"}.items():
        assert canonical_name(alias) == name
        assert model_class(alias).name == name
    assert isinstance(create_model("ae", image_size=64), AnomalyModel)


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError) as err:
        create_model("resnet")
    for name in MODELS:
        assert name in str(err.value)


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="latnt_dim.*latent_dim"):
        create_model("ae", latnt_dim=64)


@pytest.mark.parametrize("name,options", [
    ("autoencoder", {"bottleneck": "conv"}), ("autoencoder", {"loss": "l3"}), ("autoencoder", {"noise_res": 0}),
    ("vae", {"kl_weight": -1.0}), ("gan", {"gan_fraction": 1.0}), ("vit", {"patch_size": 24}),
    ("vit", {"num_heads": 7}), ("vit", {"decoder": "mlp"}), ("gan", {"upsample": "bilinear"}),
])
def test_bad_options_raise_config_error(name, options):
    with pytest.raises(ConfigError):
        create_model(name, image_size=64, **options)


# -- the contract every model keeps -------------------------------------------------------------------------
@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("name", REGISTERED)
def test_training_step_and_anomaly_map(name, channels, size):
    model = create_model(name, in_channels=channels, image_size=size)
    x = brain_batch(3, channels, size)
    optimizers = model.configure_optimizers(1e-3)
    model.train()
    before = snapshot(model)
    for progress in (0.1, 0.9):  # both f-AnoGAN phases; a no-op distinction for the others
        losses = model.training_step(x, optimizers, progress)
        assert losses and all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert changed(before, model)

    model.eval()
    out = model.anomaly_map(x)
    assert isinstance(out, AnomalyOutput)
    assert out.anomaly_map.shape == (3, 1, size, size) and out.pred_score.shape == (3,)
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.pred_score).all()
    assert (out.anomaly_map >= 0).all() and (out.pred_score >= 0).all()
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    again = model.anomaly_map(x)
    assert torch.equal(out.anomaly_map, again.anomaly_map) and torch.equal(out.pred_score, again.pred_score)
    val = model.validation_loss(x)
    assert val.ndim == 0 and torch.isfinite(val)


@pytest.mark.parametrize("name", REGISTERED)
def test_rebuild_from_hparams(name):
    model = create_model(name, in_channels=2, image_size=64, **SMALL.get(name, {}))
    hparams = json.loads(json.dumps(model.hparams))  # checkpoints store them as JSON
    assert hparams["in_channels"] == 2 and hparams["image_size"] == 64
    rebuilt = create_model(name, **hparams)
    assert rebuilt.hparams == model.hparams
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    model.eval(), rebuilt.eval()
    x = brain_batch(2, 2, 64)
    assert torch.equal(model.anomaly_map(x).anomaly_map, rebuilt.anomaly_map(x).anomaly_map)


@pytest.mark.parametrize("name", REGISTERED)
def test_works_under_bf16_autocast(name):
    model = create_model(name, in_channels=1, image_size=64)
    x = brain_batch(2, 1, 64)
    optimizers = model.configure_optimizers(1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.training_step(x, optimizers, 0.9)
        model.eval()
        out = model.anomaly_map(x)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert out.anomaly_map.dtype == torch.float32 and torch.isfinite(out.anomaly_map).all()


# -- autoencoder --------------------------------------------------------------------------------------------
def test_autoencoder_loss_decreases_on_a_fixed_batch():
    model = create_model("ae", image_size=64)
    x = brain_batch(4, 1, 64)
    optimizers = model.configure_optimizers(2e-3)
    model.train()
    losses = [model.training_step(x, optimizers, 0.0)["loss"] for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_autoencoder_defaults_to_a_denoising_unet_and_keeps_the_spatial_and_dense_msc_variants():
    model = create_model("ae", image_size=64, noise_res=8)
    assert model.hparams["bottleneck"] == "unet" and model.hparams["residual"] == "positive" and model.noise_std == 0.2
    x = brain_batch(2, 1, 64)
    noise = coarse_noise(x, 0.2, 8)
    assert (noise[x == 0] == 0).all() and noise[x > 0].abs().mean() > 0.01
    losses = model.training_step(x, model.configure_optimizers(1e-3), 0.0)
    assert losses["loss"] > 0
    model.eval()
    assert model.reconstruct(x).shape == x.shape

    for variant in ({"bottleneck": "dense", "noise_std": 0.0, "residual": "abs"}, {"bottleneck": "spatial"}):
        other = create_model("ae", image_size=64, **variant)
        assert other.training_step(x, other.configure_optimizers(1e-3), 0.0)["loss"] > 0
        assert other.eval().reconstruct(x).shape == x.shape


@pytest.mark.parametrize("channels", [1, 4])
def test_unet_head_is_the_one_conv_over_the_stacked_features_and_image(channels):
    """The U-Net's head runs as two convs (no concatenated copy, for speed); it must stay the function its
    weights define, one conv over [last_up(h), x], so trained checkpoints mean what they meant."""
    unet = create_model("ae", in_channels=channels, image_size=64).encoder.train()
    x = brain_batch(3, channels, 64)

    def reference(x):
        h = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for stage in unet.down:
            h = stage(h)
            skips.append(h)
        for up, fuse, skip in zip(unet.up, unet.fuse, reversed(skips[:-1])):
            h = fuse(torch.cat([up(h), skip], dim=1))
        return unet.head(torch.cat([unet.last_up(h), x], dim=1))

    state = {k: v.clone() for k, v in unet.state_dict().items()}  # BatchNorm running stats move in train mode
    ours = unet(x)
    ours.square().sum().backward()
    grads = [p.grad.clone() for p in unet.parameters()]
    unet.load_state_dict(state)
    unet.zero_grad()
    ref = reference(x)
    ref.square().sum().backward()
    assert torch.allclose(ours, ref, atol=1e-5)
    for g, p in zip(grads, unet.parameters()):  # equal up to float32 summation order
        assert (g - p.grad).abs().max() <= 1e-5 * p.grad.abs().max()


def test_a_gradient_scaler_updates_as_plain_backward_does_and_skips_a_step_that_overflowed():
    """float16 training (CUDA GPUs without bfloat16) scales each loss through the model's grad_scaler."""
    import copy

    plain = create_model("ae", image_size=64, noise_std=0.0)
    scaled = copy.deepcopy(plain)
    scaled.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = brain_batch(2, 1, 64)
    opt_plain, opt_scaled = plain.configure_optimizers(1e-3), scaled.configure_optimizers(1e-3)
    plain.training_step(x, opt_plain, 0.0)
    scaled.training_step(x, opt_scaled, 0.0)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    before = [p.detach().clone() for p in scaled.parameters()]
    scaled.optimize(opt_scaled["model"], lambda: scaled(x).sum() * float("inf"))
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))
    assert scaled.grad_scaler.get_scale() < 2.0**10


@pytest.mark.parametrize("name", ["autoencoder", "ganomaly", "vit"])
def test_denoising_options_are_validated_and_train(name):
    with pytest.raises(ConfigError, match="noise_std"):
        create_model(name, image_size=64, noise_std=-0.1)
    with pytest.raises(ConfigError, match="noise_res"):
        create_model(name, image_size=64, noise_res=65)
    model = create_model(name, image_size=64, noise_std=0.3, noise_res=8)
    x = brain_batch(2, 1, 64)
    losses = model.training_step(x, model.configure_optimizers(1e-3), 0.0)
    assert all(math.isfinite(v) for v in losses.values())


# -- f-AnoGAN -----------------------------------------------------------------------------------------------
def test_fanogan_phases():
    model = create_model("gan", image_size=64, n_critic=2, gan_fraction=0.5)
    x = brain_batch(3, 1, 64)
    optimizers = model.configure_optimizers(1e-3)
    model.train()
    g, d, e = params(model.generator), params(model.critic), params(model.encoder)

    model.training_step(x, optimizers, 0.1)  # critic step 1: critic only (G's BatchNorm stats may move)
    assert changed(d, model.critic) and not changed(g, model.generator) and not changed(e, model.encoder)
    model.training_step(x, optimizers, 0.2)  # critic step 2: generator too (n_critic = 2)
    assert changed(g, model.generator) and not changed(e, model.encoder)
    assert int(model.critic_steps) == 2 and "critic_steps" in model.state_dict()

    g, d, e = snapshot(model.generator), snapshot(model.critic), params(model.encoder)  # G's BN stats too
    losses = model.training_step(x, optimizers, 0.6)
    assert "izi_f" in losses
    assert changed(e, model.encoder) and not changed(g, model.generator) and not changed(d, model.critic)
    assert all(p.requires_grad for p in model.parameters())  # freezing is undone
    assert not model.checkpoint_selectable(0.5) and model.checkpoint_selectable(0.6)


def test_fanogan_critic_sees_overall_brightness():
    # Samples that are too bright must cost the generator: a per-sample norm straight after the first conv
    # would make the critic blind to a global intensity scale (its score of 0.5·x would equal that of x).
    critic = create_model("gan", image_size=64).critic.eval()
    x = brain_batch(4, 1, 64)
    assert (critic(x)[0] - critic(0.5 * x)[0]).abs().min() > 1e-4


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_fanogan_generator_upsampling(upsample):
    model = create_model("gan", image_size=64, upsample=upsample).eval()
    layers = {type(m).__name__ for m in model.generator.modules()}
    assert ("ConvTranspose2d" in layers) == (upsample == "transpose") and ("Upsample" in layers) == (upsample == "resize")
    assert model.sample(2, torch.device("cpu")).shape == (2, 1, 64, 64)


# -- GANomaly -----------------------------------------------------------------------------------------------
def test_ganomaly_reinitialises_a_collapsed_discriminator():
    model = create_model("ganomaly", image_size=64, reinit_below=1e9)  # every loss counts as collapsed
    optimizers = model.configure_optimizers(1e-3)
    model.training_step(brain_batch(2, 1, 64), optimizers, 0.0)
    assert not optimizers["discriminator"].state  # Adam state cleared with the fresh weights
    assert optimizers["generator"].state


# -- ViT ----------------------------------------------------------------------------------------------------
def test_patchify_roundtrip():
    x = torch.rand(2, 3, 64, 64)
    tokens = patchify(x, 16)
    assert tokens.shape == (2, 16, 16 * 16 * 3)
    assert torch.equal(tokens[0, 1], x[0, :, :16, 16:32].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(tokens, 16, 3, 4), x)


@pytest.mark.parametrize("n,ratio", [(16, 0.2), (64, 0.2), (256, 0.2), (64, 0.75), (16, 0.0)])
def test_random_token_mask_count(n, ratio):
    mask = random_token_mask(5, n, ratio, torch.device("cpu"))
    assert (mask.sum(dim=1) == round(ratio * n)).all()
    assert len({tuple(row.tolist()) for row in mask}) > 1 or ratio == 0  # patterns differ between samples


def test_vit_context_dropout_only_in_training():
    model = create_model("vit", image_size=64, context_dropout=0.2)
    x = brain_batch(2, 1, 64)
    model.train()
    recon, mask = model(x, model.context_dropout)
    assert mask is not None and (mask.sum(dim=1) == round(0.2 * 16)).all()
    before = model.mask_token.detach().clone()
    model.training_step(x, model.configure_optimizers(1e-3), 0.0)
    assert not torch.equal(before, model.mask_token)  # the mask token is used (and learned) in training

    model.eval()
    model.inpaint_groups = 0  # plain reconstruction: no token is dropped in eval
    first = model.reconstruct(x)
    with torch.no_grad():
        model.mask_token.fill_(1e3)  # would wreck any output that used it
    assert torch.equal(first, model.reconstruct(x))
    assert model(x)[1] is None


def test_vit_inpainting_predicts_each_patch_without_seeing_it():
    model = create_model("vit", image_size=64, inpaint_groups=5).eval()  # 16 patches of 16x16
    x = brain_batch(2, 1, 64)
    recon = model.reconstruct(x)
    assert torch.equal(recon, model.reconstruct(x))  # deterministic
    changed = x.clone()
    changed[:, :, 16:32, 32:48] = 1.0 - changed[:, :, 16:32, 32:48]  # one patch's own pixels
    again = model.reconstruct(changed)
    # That patch was predicted from a pass that hid it, so its prediction ignores its own pixels ...
    assert torch.allclose(again[:, :, 16:32, 32:48], recon[:, :, 16:32, 32:48], atol=1e-6)
    # ... while its neighbours (context in their passes) do change.
    assert not torch.allclose(again, recon, atol=1e-4)
    plain = create_model("vit", **{**model.hparams, "inpaint_groups": 0}).eval()
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain.reconstruct(changed)[:, :, 16:32, 32:48], recon[:, :, 16:32, 32:48], atol=1e-4)


def test_vit_test_time_drops_are_seeded():
    model = create_model("vit", image_size=64, inpaint_groups=0, test_time_drops=3).eval()
    x = brain_batch(2, 1, 64)
    a, b = model.anomaly_map(x), model.anomaly_map(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map)
    plain = create_model("vit", **{**model.hparams, "test_time_drops": 0}).eval()
    plain.load_state_dict(model.state_dict())
    assert not torch.equal(plain.anomaly_map(x).anomaly_map, a.anomaly_map)


def test_vit_msc_configuration_builds():
    model = create_model("vit", image_size=128, decoder="conv", noise_std=0.0)
    assert (model.hparams["patch_size"], model.hparams["embed_dim"], model.hparams["depth"],
            model.hparams["num_heads"], model.hparams["dropout"], model.hparams["context_dropout"]) == (16, 256, 4, 8, 0.1, 0.2)
    model.eval()
    assert model.reconstruct(brain_batch(1, 1, 128)).shape == (1, 1, 128, 128)


def test_every_model_scores_the_positive_residual_by_default_and_keeps_abs_reachable():
    # Measured on real scans (README): hyperintense lesions are what FLAIR shows, dark misses are noise.
    for name in list_models():
        assert create_model(name, image_size=32).hparams["residual"] == "positive", name
        assert create_model(name, image_size=32, residual="abs").hparams["residual"] == "abs", name
