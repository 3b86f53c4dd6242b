"""Defect generators: never an empty mask, nothing changes outside it, same seed same defect."""

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel

from diffad.errors import ConfigError, DataError
from diffad.synthesis import (
    FILLS,
    crack,
    cutpaste,
    cutpaste_scar,
    diffusion_inpaint,
    draem_anomaly,
    estimate_foreground,
    noise_mask,
    perlin_noise,
    scratch,
    spots,
    synthesize,
)
from diffad.synthesis.drawn import stroke_alpha

torch.set_num_threads(1)


def texture(channels=1, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((channels, size, size), generator=g) * 1.6 - 0.8


def tiny_unet(channels, size):
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    ).eval()


def tiny_vae(channels):
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
    ).eval()


def latent_model():
    return {
        "vae": tiny_vae(1),
        "unet": tiny_unet(4, 16),
        "scheduler": DDIMScheduler(),
        "num_inference_steps": 2,
    }


GENERATORS = {
    **{
        f"draem-{fill}": (lambda im, g, f=fill, **kw: draem_anomaly(im, g, fill=f, **kw))
        for fill in FILLS
        if fill != "texture"
    },
    "cutpaste": cutpaste,
    "cutpaste_scar": cutpaste_scar,
    "scratch": scratch,
    "spots-spot": lambda im, g, **kw: spots(im, g, kind="spot", **kw),
    "spots-hole": lambda im, g, **kw: spots(im, g, kind="hole", **kw),
    "crack": crack,
    "diffusion-latent": lambda im, g, **kw: diffusion_inpaint(im, g, **latent_model(), **kw),
    "diffusion-simplex": lambda im, g, **kw: diffusion_inpaint(
        im, g, noise="simplex", strength=0.5, **latent_model(), **kw
    ),
    "diffusion-pixel": lambda im, g, **kw: diffusion_inpaint(
        im, g, unet=tiny_unet(im.shape[0], 32), scheduler=DDPMScheduler(), num_inference_steps=2, **kw
    ),
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_mask_is_the_support_of_the_change(name):
    image = texture(channels=1)
    for seed in range(3):
        out, mask = GENERATORS[name](image, torch.Generator().manual_seed(seed))
        assert out.shape == image.shape and mask.shape == (1, 32, 32)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum() > 0, "the mask must never be empty"
        outside = mask.expand_as(image) == 0
        assert torch.equal(out[outside], image[outside]), "a pixel outside the mask changed"
        assert (out - image).abs().amax() > 0.02, "the defect changed nothing"
        assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("name", list(GENERATORS))
def test_same_seed_same_defect(name):
    image = texture(channels=1, seed=1)
    a = GENERATORS[name](image, torch.Generator().manual_seed(7))
    b = GENERATORS[name](image, torch.Generator().manual_seed(7))
    c = GENERATORS[name](image, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a.params == b.params
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "name",
    [
        "draem-self",
        "draem-flat",
        "cutpaste",
        "cutpaste_scar",
        "scratch",
        "spots-hole",
        "crack",
        "diffusion-latent",
    ],
)
def test_defects_stay_inside_the_foreground(name):
    image = texture(channels=1, seed=2)
    fg = torch.zeros(1, 32, 32, dtype=torch.bool)
    fg[:, 8:20, 10:30] = True
    for seed in range(3):
        out, mask = GENERATORS[name](image, torch.Generator().manual_seed(seed), foreground=fg)
        assert mask.sum() > 0 and not (mask.bool() & ~fg).any()
        assert torch.equal(out[:, ~fg[0]], image[:, ~fg[0]])


@pytest.mark.parametrize("name", ["draem-blur", "draem-noise", "cutpaste", "scratch", "crack", "spots-spot"])
def test_a_one_pixel_foreground_still_gets_a_defect(name):
    image = texture(channels=1, seed=3)
    fg = torch.zeros(1, 32, 32, dtype=torch.bool)
    fg[0, 5, 9] = True
    out, mask = GENERATORS[name](image, torch.Generator().manual_seed(0), foreground=fg)
    assert torch.equal(mask.bool(), fg)
    assert out[0, 5, 9] != image[0, 5, 9]


def test_removing_fills_on_a_flat_image_fall_back_to_a_visible_defect():
    flat = torch.full((1, 32, 32), 0.2)  # blurring or flattening it would change nothing
    result = draem_anomaly(flat, 0, fill="blur")
    assert result.params.get("fallback") == "spot" and result.mask.sum() > 0
    assert (result.image - flat).abs().amax() > 0.3


def test_removing_fills_remove_texture():
    image = texture(channels=1, seed=4)
    for fill in ("blur", "smooth", "flat"):
        out, mask = draem_anomaly(image, 3, fill=fill, opacity=(1.0, 1.0), feather=0)
        inside = mask[0] > 0
        # Local texture: the spread of horizontal neighbour differences inside the defect.
        dx_before = (image[0, :, 1:] - image[0, :, :-1])[inside[:, 1:] & inside[:, :-1]].abs().mean()
        dx_after = (out[0, :, 1:] - out[0, :, :-1])[inside[:, 1:] & inside[:, :-1]].abs().mean()
        assert dx_after < 0.5 * dx_before, fill


def test_batch_and_colour_images():
    batch = torch.stack([texture(3, seed=s) for s in range(3)])
    result = synthesize(batch, "mix", 5)
    assert result.image.shape == batch.shape and result.mask.shape == (3, 1, 32, 32)
    assert len(result.params) == 3 and all(m.sum() > 0 for m in result.mask)
    one = synthesize(batch[1], "draem", 0)
    assert one.image.shape == (3, 32, 32)


def test_texture_folder_fill(tmp_path):
    from PIL import Image

    for i in range(2):
        Image.fromarray((np.indices((20, 24)).sum(0) % (3 + i) * 80).astype(np.uint8)).save(
            tmp_path / f"t{i}.png"
        )
    out, mask = draem_anomaly(texture(3), 0, fill="texture", textures=tmp_path)
    assert mask.sum() > 0
    with pytest.raises(ConfigError, match="texture folder"):
        draem_anomaly(texture(1), 0, fill="texture")
    with pytest.raises(DataError, match="not a folder"):
        draem_anomaly(texture(1), 0, textures=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        draem_anomaly(texture(1), 0, textures=tmp_path / "empty")


def test_bad_arguments_raise_user_errors():
    with pytest.raises(ConfigError, match="unknown synthesis method"):
        synthesize(texture(), "sparkles", 0)
    with pytest.raises(ConfigError, match="unknown synthesis option"):
        synthesize(texture(), "draem", 0, colour="red")
    with pytest.raises(DataError, match="empty"):
        cutpaste(texture(), 0, foreground=torch.zeros(1, 32, 32))
    with pytest.raises(DataError, match="shape"):
        cutpaste(texture(), 0, foreground=torch.ones(1, 16, 16))
    with pytest.raises(ConfigError, match="trained model"):
        diffusion_inpaint(texture(), 0, unet=None, scheduler=None)


def test_perlin_noise_is_zero_on_the_lattice():
    # 8 px with 2 periods: pixel centres sit at lattice coordinates 0, 0.25, ..., 1.75, so pixels 0 and 4
    # lie on lattice points, where Perlin noise (a sum of gradient dot offset terms) is exactly 0.
    noise = perlin_noise((8, 8), (2, 2), generator=torch.Generator().manual_seed(0))
    for y in (0, 4):
        for x in (0, 4):
            assert abs(float(noise[y, x])) < 1e-6
    assert noise.abs().max() > 0.1 and noise.abs().max() <= math.sqrt(2) * math.sqrt(0.5) + 1e-5
    rotated = perlin_noise((8, 8), (2, 2), generator=torch.Generator().manual_seed(0), angle=30)
    assert not torch.allclose(rotated, noise)


def test_noise_mask_fallback_takes_the_top_of_the_field():
    # No Perlin value reaches 2.0: every draw fails, and the top 5 % of the last field is taken.
    mask, params = noise_mask((32, 32), torch.Generator().manual_seed(0), threshold=2.0, tries=2)
    assert params["mask_attempts"] == 3 and 0.03 <= float(mask.mean()) <= 0.07


def test_stroke_alpha_matches_a_hand_drawn_line():
    # A horizontal line through pixel centres y = 10.5 of width 3 covers rows 9, 10 and 11 fully.
    points = torch.tensor([[10.5, 4.0], [10.5, 20.0]])
    alpha = stroke_alpha(points, torch.tensor([3.0, 3.0]), (24, 24))[0]
    assert torch.equal(alpha[9:12, 6:18], torch.ones(3, 12))
    assert alpha[8, 10] == 0 and alpha[12, 10] == 0 and alpha[10, 0] == 0


def test_foreground_estimate_finds_a_disk_and_accepts_a_texture():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disk = ((yy - 30) ** 2 + (xx - 34) ** 2) < 18**2
    image = torch.where(disk, 0.6, -0.7)[None].float() + 0.05 * texture(1, 64)
    fg = estimate_foreground(image)
    iou = (fg[0] & disk).sum() / (fg[0] | disk).sum()
    assert iou > 0.9
    assert estimate_foreground(texture(1, 64)).all()  # no object: everything is foreground


class OracleUNet(torch.nn.Module):
    """The perfect model of a one-image distribution: it predicts exactly the noise that separates
    z_t from that image's latent. Denoising with it must give the image back."""

    def __init__(self, z0, alphas_cumprod):
        super().__init__()
        self.z0, self.acp = z0, alphas_cumprod
        self.config = type("Config", (), {"in_channels": z0.shape[1]})()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, t):
        a = self.acp[int(t)]
        return type("Out", (), {"sample": (z - a.sqrt() * self.z0) / (1 - a).sqrt()})()


@pytest.mark.parametrize("anomaly_strength", [0.0, 2.0])
def test_a_perfect_model_paints_a_normal_patch(anomaly_strength):
    image = texture(1, seed=5)
    scheduler = DDIMScheduler()
    unet = OracleUNet(image[None], scheduler.alphas_cumprod)
    out, mask = diffusion_inpaint(
        image, 0, unet=unet, scheduler=scheduler, num_inference_steps=4, anomaly_strength=anomaly_strength
    )
    assert mask.sum() > 0
    assert torch.allclose(out, image, atol=1e-4)


def test_anomaly_strength_moves_the_patch_further():
    image = texture(1, seed=6)
    kw = {"unet": tiny_unet(1, 32), "scheduler": DDPMScheduler(), "num_inference_steps": 3}
    base = diffusion_inpaint(image, 0, anomaly_strength=0.0, **kw)
    gaps = [
        float((diffusion_inpaint(image, 0, anomaly_strength=s, **kw).image - base.image).abs().sum())
        for s in (0.5, 8.0)
    ]
    assert 0 < gaps[0] < gaps[1]
