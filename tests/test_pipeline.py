"""AnomalyDetectionPipeline with tiny random components (16 px, 2 steps, CPU)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffad.pipelines.pipeline_anomaly_detection import AnomalyDetectionOutput
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel, VQModel

from diffad import AnomalyDetectionPipeline
from diffad.errors import ConfigError
from diffad.scoring.scorer import AnomalyScorer

SIZE = 16


def tiny_unet(channels: int, sample_size: int) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )


def tiny_vae(kind: str = "kl", channels: int = 3):
    torch.manual_seed(0)
    common = dict(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=SIZE,
        latent_channels=4,
    )
    return AutoencoderKL(**common) if kind == "kl" else VQModel(num_vq_embeddings=16, **common)


def tiny_pipeline(vae: str | None = "kl", channels: int = 3, **scorer_kwargs) -> AnomalyDetectionPipeline:
    """A latent pipeline (vae "kl" or "vq") or a pixel-space one (vae None), in eval mode."""
    settings = dict(resolution=SIZE, num_inference_steps=2, noise="gaussian", smoothing_sigma=1.0)
    settings.update(scorer_kwargs)
    pipe = AnomalyDetectionPipeline(
        unet=tiny_unet(4 if vae else channels, SIZE // 2 if vae else SIZE),
        scheduler=DDIMScheduler(num_train_timesteps=100),
        scorer=AnomalyScorer(**settings),
        vae=tiny_vae(vae, channels) if vae else None,
    )
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(count: int = 2, channels: int = 3, seed: int = 0, size: int = SIZE) -> np.ndarray:
    shape = (count, size, size, channels)
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("kl")


@pytest.fixture(scope="module")
def np_output(pipe):
    # Module-scoped, so set up before the per-test one-thread fixture: the thread count is fixed here
    # too, or bit-for-bit comparisons against it depend on which test asks first.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pipe(images(), generator=seeded())
    finally:
        torch.set_num_threads(threads)


def test_np_output(np_output):
    assert isinstance(np_output, AnomalyDetectionOutput)
    assert np_output.anomaly_maps.shape == (2, SIZE, SIZE) and np_output.anomaly_maps.dtype == np.float32
    assert np_output.anomaly_scores.shape == (2,)
    assert np_output.reconstructions.shape == (2, SIZE, SIZE, 3)
    assert 0 <= np_output.reconstructions.min() and np_output.reconstructions.max() <= 1
    assert np.isfinite(np_output.anomaly_maps).all()
    np.testing.assert_allclose(np_output.anomaly_scores, np_output.anomaly_maps.max(axis=(1, 2)), rtol=1e-5)


def test_pt_and_pil_outputs(pipe, np_output):
    pt = pipe(images(), generator=seeded(), output_type="pt")
    assert torch.is_tensor(pt.anomaly_maps) and pt.anomaly_maps.shape == (2, SIZE, SIZE)
    assert torch.is_tensor(pt.anomaly_scores) and pt.reconstructions.shape == (2, 3, SIZE, SIZE)
    np.testing.assert_allclose(pt.anomaly_maps.numpy(), np_output.anomaly_maps, atol=1e-6)
    pil = pipe(images(), generator=seeded(), output_type="pil")
    assert all(isinstance(m, PIL.Image.Image) and m.mode == "F" for m in pil.anomaly_maps)
    assert all(r.mode == "RGB" and r.size == (SIZE, SIZE) for r in pil.reconstructions)
    np.testing.assert_allclose(np.asarray(pil.anomaly_maps[1]), np_output.anomaly_maps[1], atol=1e-6)


def test_tuple_equals_dict_and_generator_is_reproducible(pipe, np_output):
    maps, scores, recons = pipe(images(), generator=seeded(), return_dict=False)
    assert np.array_equal(maps, np_output.anomaly_maps) and np.array_equal(scores, np_output.anomaly_scores)
    assert np.array_equal(recons, np_output.reconstructions)
    other = pipe(images(), generator=seeded(1))
    assert not np.allclose(other.anomaly_maps, np_output.anomaly_maps)


def test_batch_size_does_not_change_maps(pipe, np_output):
    one_by_one = pipe(images(), generator=seeded(), batch_size=1)
    np.testing.assert_allclose(one_by_one.anomaly_maps, np_output.anomaly_maps, atol=1e-6)


def test_calibration_changes_maps_and_survives_save_and_load(tmp_path):
    pipe = tiny_pipeline("kl")
    before = pipe(images(), generator=seeded()).anomaly_maps
    assert pipe.calibrate(images(3, seed=5), generator=seeded(2), mode="per_pixel") is pipe
    after = pipe(images(), generator=seeded()).anomaly_maps
    assert not np.allclose(before, after)
    assert pipe.scorer.config.calibration == "per_pixel"

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scorer"] == ["diffad.scoring.scorer", "AnomalyScorer"]
    assert index["feature_extractor"] == [None, None] and index["segmentation_head"] == [None, None]
    loaded = AnomalyDetectionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.feature_extractor is None and loaded.segmentation_head is None
    assert loaded.scorer.config.calibration == "per_pixel"
    assert np.array_equal(loaded(images(), generator=seeded()).anomaly_maps, after)


def test_global_calibration_standardises_the_good_images():
    pipe = tiny_pipeline(None, ssim_weight=0.0, smoothing_sigma=0.0)
    good = images(4, seed=7)
    pipe.calibrate(good, generator=seeded(3), mode="global")
    maps = pipe(good, generator=seeded(3)).anomaly_maps  # same images and noise: z-scores of themselves
    assert abs(maps.mean()) < 1e-4 and maps.std() == pytest.approx(1.0, abs=1e-3)


def test_pixel_space_ddpm_with_simplex_noise():
    pipe = tiny_pipeline(None, sampler="ddpm", noise="simplex")
    pipe.scheduler = DDPMScheduler(num_train_timesteps=100)
    out = pipe(images(1), generator=seeded(), strength=[0.1, 0.2], num_ensemble=2)
    assert out.anomaly_maps.shape == (1, SIZE, SIZE) and np.isfinite(out.anomaly_maps).all()
    again = pipe(images(1), generator=seeded(), strength=[0.1, 0.2], num_ensemble=2)
    assert np.array_equal(out.anomaly_maps, again.anomaly_maps)


def test_vq_model_and_several_sizes_in_one_call():
    pipe = tiny_pipeline("vq")
    inputs = [images(1, size=16)[0], np.random.default_rng(1).uniform(size=(10, 24)).astype(np.float32)]
    inputs.append(PIL.Image.new("RGB", (20, 12), (200, 10, 10)))
    out = pipe(inputs, generator=seeded())
    assert [m.shape for m in out.anomaly_maps] == [(16, 16), (10, 24), (12, 20)]
    assert [r.shape for r in out.reconstructions] == [(16, 16, 3), (10, 24, 3), (12, 20, 3)]
    assert out.anomaly_scores.shape == (3,)


def test_grayscale_model_takes_rgb_and_rgb_model_takes_grayscale(pipe):
    gray_pipe = tiny_pipeline(None, channels=1)
    rgb_into_gray = gray_pipe(torch.rand(2, 3, SIZE, SIZE) * 2 - 1, generator=seeded())
    assert (
        rgb_into_gray.anomaly_maps.shape == (2, SIZE, SIZE) and rgb_into_gray.reconstructions.shape[-1] == 1
    )
    gray_into_rgb = pipe(images(2, channels=1)[..., 0][0], generator=seeded())  # one (H, W) image
    assert gray_into_rgb.anomaly_maps.shape == (1, SIZE, SIZE)


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.01, [0.2, 0.0]])
def test_strength_outside_unit_interval_is_refused(pipe, strength):
    with pytest.raises(ConfigError, match="strength"):
        pipe(images(1), strength=strength)


def test_nan_input_is_refused(pipe):
    bad = images(1)
    bad[0, 3, 3, 1] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        pipe(bad)


def test_pipeline_with_transformers_feature_extractor_round_trips(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    pipe = tiny_pipeline("kl", pixel_weight=0.0, ssim_weight=0.0, latent_weight=0.0)
    pipe.register_modules(feature_extractor=ResNetModel(config).eval())
    maps = pipe(images(1), generator=seeded()).anomaly_maps
    assert maps.shape == (1, SIZE, SIZE) and maps.max() > 0  # only the feature residual is weighted
    pipe.save_pretrained(tmp_path)
    loaded = AnomalyDetectionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.feature_extractor).__name__ == "ResNetModel"
    assert np.array_equal(loaded(images(1), generator=seeded()).anomaly_maps, maps)


def test_no_usable_residual_is_a_config_error():
    pipe = tiny_pipeline(None, pixel_weight=0.0, ssim_weight=0.0)  # latent needs a vae
    with pytest.raises(ConfigError, match="weight"):
        pipe(images(1))


def test_without_reconstructions_the_maps_are_the_same_and_latent_only_skips_decoding(pipe, np_output):
    out = pipe(images(), generator=seeded(), output_reconstructions=False)
    np.testing.assert_array_equal(out.anomaly_maps, np_output.anomaly_maps)
    # The pixel residuals decode anyway, and what was decoded comes back.
    np.testing.assert_array_equal(out.reconstructions, np_output.reconstructions)
    latent_only = tiny_pipeline("kl", pixel_weight=0.0, ssim_weight=0.0, feature_weight=0.0)
    decoded = []
    latent_only.vae.decode = lambda z, *a, _orig=latent_only.vae.decode, **k: (
        decoded.append(1) or _orig(z, *a, **k)
    )
    fast = latent_only(images(), generator=seeded(), output_reconstructions=False)
    assert fast.reconstructions is None and not decoded
    full = latent_only(images(), generator=seeded())
    assert decoded and full.reconstructions.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(fast.anomaly_maps, full.anomaly_maps)
