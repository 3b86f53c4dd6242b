"""AnomalySynthesisPipeline: inputs and outputs of every kind, the tuple form, save/load, model folders."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel

from diffad import AnomalySynthesisOutput, AnomalySynthesisPipeline
from diffad.errors import ConfigError
from diffad.synthesis import noise_mask

torch.set_num_threads(1)


def components():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
    )
    unet = UNet2DModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    return {"vae": vae.eval(), "unet": unet.eval(), "scheduler": DDIMScheduler()}


def grey_batch(n=2, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, 1, size, size), generator=g) * 1.6 - 0.8


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_output_types_and_the_tuple_form():
    pipe = quiet(AnomalySynthesisPipeline())
    images = grey_batch()
    out = pipe(images, method="scratch", generator=0)
    assert isinstance(out, AnomalySynthesisOutput)
    assert out.images.shape == (2, 32, 32, 1) and out.masks.shape == (2, 32, 32)
    assert out.images.dtype == np.float32 and 0 <= out.images.min() and out.images.max() <= 1
    as_tuple = pipe(images, method="scratch", generator=0, return_dict=False)
    assert len(as_tuple) == 2
    assert np.array_equal(as_tuple[0], out.images) and np.array_equal(as_tuple[1], out.masks)
    pt = pipe(images, method="scratch", generator=0, output_type="pt")
    assert pt.images.shape == (2, 1, 32, 32) and pt.masks.shape == (2, 1, 32, 32)
    assert np.allclose(pt.images.permute(0, 2, 3, 1).numpy(), out.images)
    pil = pipe(images, method="scratch", generator=0, output_type="pil")
    assert pil.images[0].mode == "L" and pil.masks[0].mode == "L"
    assert np.array_equal(np.asarray(pil.masks[1]) > 0, out.masks[1] > 0)
    # Pixels outside the mask keep the input's value ([-1, 1] -> [0, 1]).
    for i in range(2):
        outside = out.masks[i] == 0
        assert np.allclose(
            out.images[i, ..., 0][outside], ((images[i, 0].numpy() + 1) / 2)[outside], atol=1e-6
        )


def test_pil_and_numpy_inputs_of_different_sizes():
    pipe = quiet(AnomalySynthesisPipeline())
    grey = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40), dtype=np.uint8))
    colour = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    out = pipe([grey, colour], method="cutpaste", generator=1)
    assert out.images[0].shape == (24, 40, 1) and out.images[1].shape == (32, 32, 3)
    assert out.masks[0].shape == (24, 40) and out.masks[0].sum() > 0
    with pytest.raises(ConfigError, match="in \\[-1, 1\\]"):
        pipe(torch.full((1, 8, 8), 3.0), method="draem")


def test_same_seed_same_output_and_mix_names_each_method():
    pipe = quiet(AnomalySynthesisPipeline())
    images = grey_batch(4)
    a = pipe(images, method="mix", generator=torch.Generator().manual_seed(3))
    b = pipe(images, method="mix", generator=3)
    assert np.array_equal(a.images, b.images) and a.params == b.params
    assert all(
        p["method"] in ("draem", "smooth", "cutpaste", "cutpaste_scar", "scratch", "spots", "crack")
        for p in a.params
    )


def test_diffusion_needs_a_model_and_round_trips_through_save_pretrained(tmp_path):
    with pytest.raises(ConfigError, match="needs a pipeline with a trained unet"):
        AnomalySynthesisPipeline()(grey_batch(1), method="diffusion")
    pipe = quiet(AnomalySynthesisPipeline(**components()))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 4:30] = 1
    kwargs = {"method": "diffusion", "num_inference_steps": 2, "output_type": "pt", "anomaly_strength": 1.5}
    first = pipe(grey_batch(1), generator=0, mask=mask, **kwargs)
    assert torch.equal(first.masks, mask)
    pipe.save_pretrained(tmp_path / "saved")
    loaded = quiet(AnomalySynthesisPipeline.from_pretrained(tmp_path / "saved"))
    again = loaded(grey_batch(1), generator=0, mask=mask, **kwargs)
    assert torch.equal(first.images, again.images)
    # A folder that holds more than these three components (a detection pipeline) loads too.
    (tmp_path / "saved" / "scorer").mkdir()
    from_folder = quiet(AnomalySynthesisPipeline.from_model_folder(tmp_path / "saved"))
    assert torch.equal(from_folder(grey_batch(1), generator=0, mask=mask, **kwargs).images, first.images)
    with pytest.raises(ConfigError, match="no unet"):
        AnomalySynthesisPipeline.from_model_folder(tmp_path)


def test_simplex_masks():
    g = torch.Generator().manual_seed(0)
    mask, params = noise_mask((32, 32), g, noise="simplex")
    again, _ = noise_mask((32, 32), torch.Generator().manual_seed(0), noise="simplex")
    perlin, _ = noise_mask((32, 32), torch.Generator().manual_seed(0), noise="perlin")
    assert mask.sum() > 0 and torch.equal(mask, again) and not torch.equal(mask, perlin)
    assert params["mask_noise"] == "simplex"
    out = quiet(AnomalySynthesisPipeline())(grey_batch(1), method="draem", generator=0, mask_noise="simplex")
    assert out.params[0]["mask_noise"] == "simplex"
