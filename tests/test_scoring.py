"""Residuals, smoothing, feature extraction, input conversion and the scorer, against references
(scipy, scikit-image, PIL, numpy formulas)."""

import numpy as np
import PIL.Image
import pytest
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from diffad.errors import ConfigError, DataError
from diffad.scoring.features import extract_features
from diffad.scoring.images import convert_channels, to_tensor_list
from diffad.scoring.residuals import feature_residual, latent_residual, pixel_residual, ssim_map
from diffad.scoring.scorer import RESIDUALS, AnomalyScorer
from diffad.scoring.smoothing import average_pool, gaussian_blur


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_matches_scipy_nearest(sigma):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 12, 20))
    ours = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    for ours_map, theirs in zip(ours, maps):
        expected = ndimage.gaussian_filter(theirs, sigma, mode="nearest", truncate=4.0)
        np.testing.assert_allclose(ours_map, expected, atol=1e-10)


def test_average_pool_matches_scipy_uniform_filter():
    maps = np.random.default_rng(1).normal(size=(1, 9, 11))
    ours = average_pool(torch.from_numpy(maps), 3)[0].numpy()
    np.testing.assert_allclose(ours, ndimage.uniform_filter(maps[0], 3, mode="nearest"), atol=1e-12)


def test_ssim_map_matches_skimage_inside_the_border():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(24, 24))
    y = np.clip(x + rng.normal(scale=0.3, size=x.shape), -1, 1)
    _, expected = structural_similarity(
        x, y, data_range=2.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
    )
    ours = ssim_map(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(ours[5:-5, 5:-5], expected[5:-5, 5:-5], atol=1e-5)


def test_pixel_residual_norms_by_hand():
    x = torch.zeros(1, 3, 1, 1)
    y = torch.tensor([3.0, -4.0, 0.0]).view(1, 3, 1, 1)
    assert pixel_residual(x, y, "l1").item() == pytest.approx(7 / 3)
    assert pixel_residual(x, y, "l2").item() == pytest.approx(np.sqrt(25 / 3))
    with pytest.raises(ConfigError):
        pixel_residual(x, y, "l3")


def test_latent_and_feature_residuals():
    z = torch.randn(2, 4, 4, 4)
    assert latent_residual(z, z, (16, 16)).abs().max() == 0
    assert latent_residual(z, z + 0.5, (16, 16)).shape == (2, 16, 16)
    stages = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    same = feature_residual(stages, stages, (16, 16))
    opposite = feature_residual(stages, [-s for s in stages], (16, 16))
    assert same.shape == (2, 16, 16) and same.abs().max() < 1e-5
    np.testing.assert_allclose(opposite.numpy(), 4.0, atol=1e-5)  # (1 - (-1)) per stage, two stages


def test_scorer_calibration_statistics_match_numpy():
    scorer = AnomalyScorer(resolution=8, calibration_std_floor=0.1)
    maps = np.random.default_rng(3).gamma(2.0, size=(5, 8, 8))
    moments = (5, torch.from_numpy(maps.sum(0)), torch.from_numpy((maps**2).sum(0)))
    row = RESIDUALS.index("ssim")

    scorer.set_calibration("per_pixel", {"ssim": moments})
    floor = 0.1 * maps.std()
    # Each pixel's statistics are those of a mixture: 5 images of its own, 16 of the global ones.
    share = 5 / (5 + 16)
    mean = share * maps.mean(0) + (1 - share) * maps.mean()
    var = share * (maps.var(0) + (maps.mean(0) - mean) ** 2) + (1 - share) * (
        maps.var() + (maps.mean() - mean) ** 2
    )
    np.testing.assert_allclose(scorer.calibration_mean[row].numpy(), mean, rtol=1e-5)
    expected_std = np.sqrt(var + floor**2)
    np.testing.assert_allclose(scorer.calibration_std[row].numpy(), expected_std, rtol=1e-5)
    assert scorer.config.calibration == "per_pixel"
    assert scorer.calibration_std[RESIDUALS.index("pixel")].eq(1).all()  # not calibrated: unchanged

    scorer.set_calibration("global", {"ssim": moments})
    np.testing.assert_allclose(scorer.calibration_mean[row].numpy(), maps.mean(), rtol=1e-5)
    np.testing.assert_allclose(scorer.calibration_std[row].numpy(), maps.std(), rtol=1e-5)
    standardised = scorer.standardise("ssim", torch.from_numpy(maps).float())
    np.testing.assert_allclose(standardised.numpy(), (maps - maps.mean()) / maps.std(), rtol=1e-4, atol=1e-5)


def test_scorer_score_is_max_of_pooled_map():
    maps = torch.zeros(2, 6, 6)
    maps[0, 2, 2] = 9.0
    maps[1, 1:4, 1:4] = 1.0
    assert AnomalyScorer(resolution=8).score(maps).tolist() == [9.0, 1.0]
    assert AnomalyScorer(resolution=8, score_pooling=3).score(maps).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize(
    "kwargs",
    [{"strength": 0.0}, {"strength": 1.5}, {"strength": [0.2, -1]}, {"noise": "pink"}, {"sampler": "euler"}],
)
def test_scorer_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        AnomalyScorer(resolution=8, **kwargs)


def test_scorer_save_and_load(tmp_path):
    scorer = AnomalyScorer(resolution=8, strength=[0.2, 0.3], noise="gaussian")
    maps = torch.rand(3, 8, 8, dtype=torch.float64)
    scorer.set_calibration("per_pixel", {"pixel": (3, maps.sum(0), (maps**2).sum(0))})
    scorer.save_pretrained(tmp_path)
    loaded = AnomalyScorer.from_pretrained(tmp_path)
    assert loaded.config.calibration == "per_pixel" and loaded.strengths == [0.2, 0.3]
    assert torch.equal(loaded.calibration_mean, scorer.calibration_mean)
    assert torch.equal(loaded.calibration_std, scorer.calibration_std)


class _ListBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        h = self.a(x)
        return [h, self.b(h)]


def test_extract_features_from_modules_and_transformers():
    x = torch.rand(2, 1, 16, 16) * 2 - 1  # grayscale into 3-channel backbones
    single = extract_features(torch.nn.Conv2d(3, 5, 3, padding=1), x)
    assert [tuple(f.shape) for f in single] == [(2, 5, 16, 16)]
    stages = extract_features(_ListBackbone(), x, layers=[-1])
    assert [tuple(f.shape) for f in stages] == [(2, 6, 4, 4)]
    with pytest.raises(ConfigError, match="out of range"):
        extract_features(_ListBackbone(), x, layers=[5])

    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    hidden = extract_features(ResNetModel(config).eval(), x)
    assert [f.shape[1] for f in hidden] == [8, 8, 16]


def test_inputs_convert_to_model_tensors():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    (gray,) = to_tensor_list(rgb, channels=1)
    luma = np.asarray(PIL.Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255  # PIL: 76 of 255
    np.testing.assert_allclose((gray[0].numpy() + 1) / 2, luma, atol=1 / 255)
    batch = to_tensor_list(np.full((2, 4, 5, 1), 0.5, dtype=np.float32), channels=3)
    assert len(batch) == 2 and batch[0].shape == (3, 4, 5) and batch[0].eq(0).all()
    (from_pil,) = to_tensor_list(PIL.Image.new("L", (7, 3), 255), channels=3)
    assert from_pil.shape == (3, 3, 7) and from_pil.eq(1).all()
    assert convert_channels(torch.zeros(4, 2, 2), 3).shape == (3, 2, 2)  # alpha dropped


@pytest.mark.parametrize(
    "bad",
    [
        np.full((4, 4), np.nan, dtype=np.float32),
        torch.tensor([[[0.0, float("inf")]]]),
        np.full((4, 4), 3.0, dtype=np.float32),  # float arrays must be in [0, 1]
        torch.full((1, 4, 4), 2.0),  # tensors must be in [-1, 1]
        np.zeros((4, 4, 2), dtype=np.uint8),  # two channels
        "not an image",
    ],
)
def test_bad_inputs_raise(bad):
    with pytest.raises((ConfigError, DataError)):
        to_tensor_list(bad, channels=3)


def test_feature_extractor_loads_from_a_local_folder_only(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    from diffad.scoring.features import load_feature_extractor

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(tmp_path / "resnet")
    assert type(load_feature_extractor(tmp_path / "resnet")).__name__ == "ResNetModel"
    with pytest.raises(ConfigError, match="local folder"):
        load_feature_extractor("microsoft/resnet-18")  # a hub name is never downloaded


@pytest.mark.parametrize(
    "deviation, expected", [("higher", [-2.0, 3.0]), ("lower", [2.0, -3.0]), ("both", [2.0, 3.0])]
)
def test_scorer_deviation_picks_the_direction_of_anomalies(deviation, expected):
    scorer = AnomalyScorer(resolution=8, deviation=deviation, pixel_weight=1.0, ssim_weight=0.5)
    pixel = torch.tensor([-1.0, 1.0]).view(2, 1, 1)
    ssim = torch.tensor([-2.0, 4.0]).view(2, 1, 1)  # uncalibrated: the residuals are the z-scores
    combined = scorer.combine({"pixel": pixel, "ssim": ssim})
    # higher: 1 * z_pixel + 0.5 * z_ssim; lower: of -z; both: of |z|
    np.testing.assert_allclose(combined.flatten().numpy(), expected)


def test_scorer_refuses_weights_for_residuals_it_was_not_given():
    scorer = AnomalyScorer(resolution=8)
    pixel = torch.ones(1, 1, 1)
    assert scorer.combine({"pixel": pixel}, weights={"pixel": 1.0, "feature_head": 0.0}).item() == 1.0
    with pytest.raises(ConfigError, match="not computed: feature_gaussian"):
        scorer.combine({"pixel": pixel}, weights={"pixel": 1.0, "feature_gaussian": 1.0})
