"""Every model preset builds, trains a step on the CPU and survives save_pretrained/from_pretrained."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel, VQModel

from diffad.errors import ConfigError
from diffad.models import PRESETS, build_autoencoder, build_unet, downsample_factor, latent_channels

# Small inputs keep the big presets quick: their size is in the weights, not the activations.
IMAGE_SIZE = {"tiny": 16, "small": 16, "base": 8}


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _vae_forward(vae, x):
    if isinstance(vae, VQModel):
        out = vae(x)
        return out.sample, out.commit_loss
    posterior = vae.encode(x).latent_dist
    return vae.decode(posterior.mode()).sample, posterior.kl().mean()


@pytest.mark.parametrize("model_type", ["kl", "vq"])
@pytest.mark.parametrize("preset", PRESETS)
def test_autoencoder_preset_trains_and_round_trips(tmp_path, preset, model_type):
    torch.manual_seed(0)  # weight init only; the test inputs use their own generator
    vae = build_autoencoder(preset, model_type, in_channels=1)
    assert isinstance(vae, AutoencoderKL if model_type == "kl" else VQModel)
    if preset == "tiny":
        assert _n_params(vae) < 1_000_000
    f, c = downsample_factor(vae), latent_channels(vae)
    assert f == 4 and c in (3, 4)
    size = IMAGE_SIZE[preset]
    x = torch.rand((2, 1, size, size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    recon, reg = _vae_forward(vae, x)
    assert recon.shape == x.shape
    latents = vae.encode(x).latents if model_type == "vq" else vae.encode(x).latent_dist.mean
    assert latents.shape == (2, c, size // f, size // f)
    ((recon - x).abs().mean() + reg.mean()).backward()
    assert all(p.grad is not None for p in vae.decoder.conv_out.parameters())

    vae.eval()
    vae.save_pretrained(tmp_path)
    loaded = type(vae).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(_vae_forward(loaded, x)[0], _vae_forward(vae, x)[0])


@pytest.mark.parametrize("preset", PRESETS)
def test_unet_preset_trains_and_round_trips(tmp_path, preset):
    torch.manual_seed(0)
    size = 8 if preset != "tiny" else 16
    unet = build_unet(preset, in_channels=3, sample_size=size)
    assert isinstance(unet, UNet2DModel)
    if preset == "tiny":
        assert _n_params(unet) < 1_000_000
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, 3, size, size), generator=g)
    t = torch.tensor([3, 700])
    out = unet(x, t).sample
    assert out.shape == x.shape
    out.square().mean().backward()
    assert unet.conv_out.weight.grad is not None

    unet.eval()
    unet.save_pretrained(tmp_path)
    loaded = UNet2DModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x, t).sample, unet(x, t).sample)


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
