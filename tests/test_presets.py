"""Every model preset builds, trains a step on the CPU and survives save_pretrained/from_pretrained."""

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel, VQModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from skimage.metrics import structural_similarity

from diffad.errors import ConfigError
from diffad.models import PRESETS, build_autoencoder, build_unet, downsample_factor, latent_channels, losses

# Small inputs keep the big presets quick: their size is in the weights, not the activations.
IMAGE_SIZE = {"tiny": 16, "small": 16, "base": 8}
BATCH = {"tiny": 2, "small": 1, "base": 1}
# The base preset has 55-75 M parameters: seconds per test even on 8 px inputs.
PRESET_PARAMS = [p if p != "base" else pytest.param(p, marks=pytest.mark.slow) for p in PRESETS]


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _vae_forward(vae, x):
    if isinstance(vae, VQModel):
        out = vae(x)
        return out.sample, out.commit_loss
    posterior = vae.encode(x).latent_dist
    return vae.decode(posterior.mode()).sample, posterior.kl().mean()


@pytest.mark.parametrize("model_type", ["kl", "vq"])
@pytest.mark.parametrize("preset", PRESET_PARAMS)
def test_autoencoder_preset_trains_and_round_trips(tmp_path, preset, model_type):
    torch.manual_seed(0)  # weight init only; the test inputs use their own generator
    vae = build_autoencoder(preset, model_type, in_channels=1)
    assert isinstance(vae, AutoencoderKL if model_type == "kl" else VQModel)
    if preset == "tiny":
        assert _n_params(vae) < 1_000_000
    f, c = downsample_factor(vae), latent_channels(vae)
    assert f == 4 and c in (3, 4)
    size = IMAGE_SIZE[preset]
    n = BATCH[preset]
    x = torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    recon, reg = _vae_forward(vae, x)
    assert recon.shape == x.shape
    latents = vae.encode(x).latents if model_type == "vq" else vae.encode(x).latent_dist.mean
    assert latents.shape == (n, c, size // f, size // f)
    ((recon - x).abs().mean() + reg.mean()).backward()
    assert all(p.grad is not None for p in vae.decoder.conv_out.parameters())

    vae.eval()
    vae.save_pretrained(tmp_path)
    loaded = type(vae).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(_vae_forward(loaded, x)[0], _vae_forward(vae, x)[0], rtol=0, atol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))


@pytest.mark.parametrize("preset", PRESET_PARAMS)
def test_unet_preset_trains_and_round_trips(tmp_path, preset):
    torch.manual_seed(0)
    size = 8 if preset != "tiny" else 16
    unet = build_unet(preset, in_channels=3, sample_size=size)
    assert isinstance(unet, UNet2DModel)
    if preset == "tiny":
        assert _n_params(unet) < 1_000_000
    g = torch.Generator().manual_seed(1)
    x = torch.randn((BATCH[preset], 3, size, size), generator=g)
    t = torch.tensor([3, 700][: BATCH[preset]])
    out = unet(x, t).sample
    assert out.shape == x.shape
    out.square().mean().backward()
    assert unet.conv_out.weight.grad is not None

    unet.eval()
    unet.save_pretrained(tmp_path)
    loaded = UNet2DModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        # Same weights; from_pretrained's memory-mapped tensors can take another SIMD path on the CPU,
        # which changes float32 rounding (~1e-6), so "identical" is to float32 precision here.
        torch.testing.assert_close(loaded(x, t).sample, unet(x, t).sample, rtol=0, atol=1e-5)
        assert loaded.state_dict().keys() == unet.state_dict().keys()
        assert all(
            torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), unet.state_dict().values())
        )


def test_small_preset_matches_the_brief():
    vae, unet = build_autoencoder("small"), build_unet("small", in_channels=4, sample_size=32)
    assert downsample_factor(vae) == 4 and latent_channels(vae) == 4
    assert tuple(unet.config.block_out_channels) == (64, 128, 128)


def test_unknown_presets_and_bad_sizes_raise_config_errors():
    with pytest.raises(ConfigError, match="preset"):
        build_autoencoder("huge")
    with pytest.raises(ConfigError, match="autoencoder type"):
        build_autoencoder("tiny", "gan")
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_unet("small", in_channels=4, sample_size=30)


# ---------------------------------------------------------------------------------------------
# Losses


def _images(seed, shape=(2, 1, 32, 32)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_ssim_of_identical_images_is_one_and_falls_with_noise():
    x = _images(0)
    torch.testing.assert_close(losses.ssim(x, x), torch.ones(2, dtype=torch.float64))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    values = [float(losses.ssim(x, x + s * noise).mean()) for s in (0.05, 0.2, 0.8)]
    assert 1 > values[0] > values[1] > values[2]


def test_ssim_map_equals_scikit_image_away_from_the_border():
    x, y = _images(2, (1, 1, 32, 32)), _images(3, (1, 1, 32, 32))
    y = 0.6 * x + 0.4 * y  # correlated, so SSIM is far from 0
    expected_mean, expected_map = structural_similarity(
        x[0, 0].numpy(),
        y[0, 0].numpy(),
        data_range=2.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    got = losses.ssim_map(x, y)[0].numpy()
    np.testing.assert_allclose(got[5:-5, 5:-5], expected_map[5:-5, 5:-5], atol=1e-10)
    # scikit-image's mean SSIM is the mean over the same interior.
    assert abs(got[5:-5, 5:-5].mean() - expected_mean) < 1e-10


def test_reconstruction_loss_is_smaller_for_closer_images_and_differentiable():
    x = _images(4).float()
    far, near = _images(5).float(), (x + 0.05 * _images(6).float()).requires_grad_()
    assert losses.reconstruction_loss(near, x) < losses.reconstruction_loss(far, x)
    assert float(losses.reconstruction_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    losses.reconstruction_loss(near, x).backward()
    assert torch.isfinite(near.grad).all() and near.grad.abs().sum() > 0
    small = _images(7, (1, 3, 4, 4))  # smaller than the window: replicate padding
    assert float(losses.ssim(small, small)[0]) == pytest.approx(1.0)


def test_kl_loss_matches_the_closed_form():
    mean = torch.tensor([[[[0.5]], [[-1.0]]]])
    logvar = torch.tensor([[[[0.0]], [[math.log(4.0)]]]])
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    # 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2) = 0.5 * (0.25 + 0 + (1 + 4 - 1 - log 4))
    expected = 0.5 * (0.25 + 4.0 - math.log(4.0))
    assert float(losses.kl_loss(posterior)) == pytest.approx(expected, rel=1e-6)


def test_autoencode_vq_loss_is_commitment_plus_quarter_codebook():
    torch.manual_seed(0)
    vae = build_autoencoder("tiny", "vq", in_channels=1)
    x = _images(8, (2, 1, 16, 16)).float()
    recon, reg = losses.autoencode(vae, x)
    z = vae.encode(x).latents  # (N, C, h, w): quantise by hand to the nearest codebook entry
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    codebook = vae.quantize.embedding.weight
    nearest = codebook[torch.cdist(flat, codebook).argmin(dim=1)]
    mse = (nearest - flat).square().mean()
    assert float(reg.detach()) == pytest.approx(1.25 * float(mse.detach()), rel=1e-5)
    # Which term carries the 0.25: the latents' gradient is the commitment term's, with weight 1.
    leaf = z.detach().requires_grad_()
    _, loss, _ = vae.quantize(leaf)
    loss.backward()
    expected = (
        -2 * (nearest.view(leaf.shape[0], *leaf.shape[2:], -1).permute(0, 3, 1, 2) - leaf) / leaf.numel()
    )
    torch.testing.assert_close(leaf.grad, expected.detach(), rtol=1e-4, atol=1e-7)
    assert recon.shape == x.shape


def test_autoencode_kl_samples_with_the_generator():
    torch.manual_seed(0)
    vae = build_autoencoder("tiny", "kl", in_channels=1)
    x = _images(9, (1, 1, 16, 16)).float()
    a, kl = losses.autoencode(vae, x, generator=torch.Generator().manual_seed(0))
    b, _ = losses.autoencode(vae, x, generator=torch.Generator().manual_seed(0))
    c, _ = losses.autoencode(vae, x, sample_posterior=False)
    assert torch.equal(a, b) and not torch.equal(a, c) and kl.item() > 0


def test_hinge_loss_and_adaptive_weight_by_hand():
    d = losses.hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5]))
    assert float(d) == pytest.approx(0.5 * (0.5 + 0.75))
    w = torch.ones(4, requires_grad=True)
    weight = losses.adaptive_weight(3 * w.sum(), 0.5 * w.sum(), w)
    assert float(weight) == pytest.approx(3 * 2 / (0.5 * 2 + 1e-4), rel=1e-6)  # |grad| = k * sqrt(4)


def test_patch_discriminator_losses_and_round_trip(tmp_path):
    torch.manual_seed(0)
    disc = losses.PatchDiscriminator(in_channels=1, base_channels=8, num_layers=2)
    vae = build_autoencoder("tiny", "kl", in_channels=1)
    x = _images(10, (2, 1, 32, 32)).float()
    assert disc(x).shape == (2, 1, 6, 6)  # 32 -> 16 -> 8 (stride 2) -> 7 -> 6 (k4, p1): a logit per patch
    recon, reg = losses.autoencode(vae, x, sample_posterior=False)
    kwargs = dict(regularization_weight=1e-6, discriminator=disc, last_layer=losses.last_decoder_layer(vae))
    early, early_logs = losses.autoencoder_loss(x, recon, reg, step=0, disc_start=10, **kwargs)
    assert "g_loss" not in early_logs
    late, late_logs = losses.autoencoder_loss(x, recon, reg, step=10, disc_start=10, **kwargs)
    assert late_logs["d_weight"] > 0 and late_logs["loss"] != early_logs["loss"]
    late.backward()
    assert vae.decoder.conv_out.weight.grad is not None
    d_early, _ = losses.discriminator_loss(disc, x, recon, step=0, disc_start=10)
    d_late, _ = losses.discriminator_loss(disc, x, recon, step=10, disc_start=10)
    assert d_early.item() == 0 and d_late.item() > 0
    d_late.backward()
    assert disc.main[0].weight.grad is not None

    disc.eval().save_pretrained(tmp_path)
    loaded = losses.PatchDiscriminator.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), disc(x))
