"""The pipeline's "feature_gaussian" residual (PaDiM inside the scorer) with tiny random components:
against numpy and against the PaDiM reference detector, save/load, old folders, fusion."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_baselines import textures, tiny_extractor, with_square
from test_pipeline import tiny_pipeline

from diffad import AnomalyDetectionPipeline
from diffad.baselines import PaDiM
from diffad.scoring import feature_gaussian as fg
from diffad.scoring import fitting

RES = 32


def gaussian_pipeline(**scorer_kwargs):
    settings = dict(resolution=RES, pixel_weight=0.0, ssim_weight=0.0, latent_weight=0.0, feature_weight=0.0)
    settings.update(feature_gaussian_weight=1.0, feature_gaussian_dim=6, smoothing_sigma=0.0)
    settings.update(scorer_kwargs)
    pipe = tiny_pipeline("kl", channels=1, **settings)
    pipe.register_modules(feature_extractor=tiny_extractor())
    return pipe


def test_moments_and_distances_match_numpy():
    z = torch.randn(9, 3, 4, generator=torch.Generator().manual_seed(0))  # 9 images, 3 positions, 4 dims
    moments = fg.GaussianMoments()
    moments.add(z[:5], (1, 3))
    moments.add(z[5:], (1, 3))
    mean, precision = moments.gaussians(0.01)
    queries = torch.randn(2, 4, 1, 3, generator=torch.Generator().manual_seed(1))
    dist = fg.mahalanobis_map(queries, torch.eye(4), mean, precision)
    for p in range(3):
        ref_mean = z[:, p].double().numpy().mean(0)
        ref_precision = np.linalg.inv(np.cov(z[:, p].double().numpy(), rowvar=False) + 0.01 * np.eye(4))
        assert np.allclose(mean[p].numpy(), ref_mean, atol=1e-6)
        assert np.allclose(precision[p].numpy(), ref_precision, rtol=1e-4, atol=1e-4)
        for n in range(2):
            d = queries[n, :, 0, p].double().numpy() - ref_mean
            assert dist[n, 0, p].item() == pytest.approx(float(np.sqrt(d @ ref_precision @ d)), rel=1e-4)


def test_pooled_embedding_by_hand():
    fine = torch.arange(16.0).view(1, 1, 4, 4)
    coarse = torch.ones(1, 2, 2, 2)
    emb = fg.pooled_embedding([fine, coarse])
    assert emb.shape == (1, 3, 4, 4)
    # Inner cell (1, 1): mean of the 3x3 block around it = the centre value of an arithmetic grid.
    assert emb[0, 0, 1, 1].item() == pytest.approx(5.0)
    # Corner (0, 0) with reflected padding: rows (1, 0, 1) x cols (1, 0, 1) of the grid.
    assert emb[0, 0, 0, 0].item() == pytest.approx(np.mean([[5, 4, 5], [1, 0, 1], [5, 4, 5]]))
    assert torch.all(emb[0, 1:] == 1.0)


def test_pipeline_gaussians_and_maps_equal_the_padim_reference():
    train, query = textures(12, seed=1), torch.cat([textures(2, seed=2), with_square(textures(2, seed=3))])
    pipe = gaussian_pipeline().calibrate(train, mode="none")
    padim = PaDiM(tiny_extractor(), resolution=RES, projection_dim=6, epsilon=0.01, sigma=0.0, seed=0)
    padim.fit([train], progress=False)
    scorer = pipe.scorer
    assert scorer.config.feature_gaussian_channels == padim.projection.shape[0]
    assert torch.allclose(scorer.gaussian_projection, padim.projection)
    assert torch.allclose(scorer.gaussian_mean, padim.mean, atol=1e-5)
    assert torch.allclose(scorer.gaussian_precision, padim.precision, rtol=1e-3, atol=1e-3)
    ours = pipe(query, generator=torch.Generator().manual_seed(0)).anomaly_maps
    assert np.allclose(ours, padim(query).anomaly_maps, rtol=1e-3, atol=1e-3)
    scores = ours.reshape(4, -1).max(1)
    assert scores[2:].min() > scores[:2].max()  # the bright square stands out


def test_deviation_lower_does_not_flip_the_feature_distance():
    train, query = textures(8, seed=1), with_square(textures(1, seed=3))
    maps = [
        gaussian_pipeline(deviation=d).calibrate(train, mode="global")(
            query, generator=torch.Generator().manual_seed(0)
        )
        for d in ("higher", "lower")
    ]
    assert np.array_equal(maps[0].anomaly_maps, maps[1].anomaly_maps)


def test_calibrated_fusion_round_trips_and_old_folders_still_load(tmp_path):
    train, query = textures(10, seed=1), with_square(textures(2, seed=3))
    pipe = gaussian_pipeline(pixel_weight=1.0, ssim_weight=0.5, smoothing_sigma=1.0)
    pipe.calibrate(
        train[:4], mode="global", gaussian_images=train[4:], generator=torch.Generator().manual_seed(0)
    )
    mean, std = pipe.scorer.gaussian_calibration
    # Global statistics of the Mahalanobis map were recorded: one value each, not the neutral 0 and 1.
    assert torch.allclose(mean, mean[0, 0]) and torch.allclose(std, std[0, 0])
    assert mean[0, 0] > 0 and std[0, 0] != 1
    maps = pipe(query, generator=torch.Generator().manual_seed(0)).anomaly_maps
    pipe.save_pretrained(tmp_path / "p")
    loaded = AnomalyDetectionPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scorer.gaussian_precision.shape == pipe.scorer.gaussian_precision.shape
    assert np.array_equal(loaded(query, generator=torch.Generator().manual_seed(0)).anomaly_maps, maps)

    # A folder saved before feature_gaussian existed: no such buffers, no such config; still loads as before.
    plain = tiny_pipeline("kl", channels=1, resolution=RES).calibrate(train[:4], mode="global")
    before = plain(query, generator=torch.Generator().manual_seed(0)).anomaly_maps
    plain.save_pretrained(tmp_path / "old")
    weights = tmp_path / "old" / "scorer" / "diffusion_pytorch_model.safetensors"
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("gaussian_")}
    save_file(state, str(weights))
    old = AnomalyDetectionPipeline.from_pretrained(tmp_path / "old")
    old.set_progress_bar_config(disable=True)
    assert np.array_equal(old(query, generator=torch.Generator().manual_seed(0)).anomaly_maps, before)


def test_without_extractor_or_weight_nothing_changes():
    train, query = textures(6, seed=1), textures(1, seed=3)
    # feature_weight 0: the (reconstruction) feature residual would use the extractor otherwise.
    base = tiny_pipeline("kl", channels=1, resolution=RES, feature_weight=0.0)
    base.calibrate(train, mode="global", generator=torch.Generator().manual_seed(0))
    assert not base.scorer.has_feature_gaussian  # default weight 0: no Gaussians fitted, none used
    with_extractor = tiny_pipeline("kl", channels=1, resolution=RES, feature_weight=0.0)
    with_extractor.register_modules(feature_extractor=tiny_extractor())
    with_extractor.calibrate(train, mode="global", generator=torch.Generator().manual_seed(0))
    assert not with_extractor.scorer.has_feature_gaussian
    a = base(query, generator=torch.Generator().manual_seed(0)).anomaly_maps
    b = with_extractor(query, generator=torch.Generator().manual_seed(0)).anomaly_maps
    assert np.array_equal(a, b)


def test_fit_calibration_attaches_features_and_fits_them_on_the_other_good_images(tmp_path, monkeypatch):
    from data_trees import make_mvtec_tree

    from diffad.models.efficientnet import EfficientNetLiteFeatures
    from diffad.training.calibration import FEATURE_SETTINGS, calibrate_pipeline

    data = make_mvtec_tree(tmp_path / "data", size=RES, n_train=7, channels=1)
    asked = []

    def fake_wheel(variant="lite0", out_stages=(2, 4), include_head=False):
        asked.append((variant, tuple(out_stages)))
        return tiny_extractor()

    monkeypatch.setattr(EfficientNetLiteFeatures, "from_wheel", fake_wheel)
    tiny_pipeline("kl", channels=1, resolution=RES).save_pretrained(tmp_path / "p")
    result = calibrate_pipeline(
        tmp_path / "p",
        str(data),
        None,
        mode="global",
        num_images=3,
        seed=0,
        features="lite0",
        feature_head_steps=5,
    )
    assert result == {"images": 3, "selection": None, "thresholds": None} and asked == [
        ("lite0", (2, 4))
    ]  # the stride-8 and stride-16 stages only
    pipe = AnomalyDetectionPipeline.from_pretrained(tmp_path / "p")
    assert isinstance(pipe.feature_extractor, EfficientNetLiteFeatures)
    config = pipe.scorer.config
    assert config.calibration == "global" and config.feature_gaussian_channels > 0
    assert all(config[k] == v for k, v in FEATURE_SETTINGS.items())
    # Fitted on the 4 good images the residual statistics did not use: refit by hand on those.
    from diffad.training.data import good_training_samples, load_images
    from diffad.training.order import generator_for

    samples = good_training_samples(str(data), None)
    rest = torch.randperm(7, generator=generator_for(0, "calibration")).tolist()[3:]
    by_hand = gaussian_pipeline(**FEATURE_SETTINGS, feature_gaussian_dim=config.feature_gaussian_dim)
    size = FEATURE_SETTINGS["feature_gaussian_resolution"]  # images are loaded at the features' size
    fitting.fit_feature_gaussian(by_hand, load_images([samples[i] for i in sorted(rest)], size, 1))
    assert torch.allclose(pipe.scorer.gaussian_mean, by_hand.scorer.gaussian_mean, atol=1e-5)


def test_features_of_larger_inputs_give_a_finer_grid_and_maps_at_the_working_size(tmp_path):
    train, query = textures(6, seed=1, size=2 * RES), with_square(textures(1, seed=3, size=2 * RES))
    pipe = gaussian_pipeline(feature_gaussian_resolution=2 * RES).calibrate(train, mode="global")
    coarse = gaussian_pipeline().calibrate(train, mode="global")
    # The tiny extractor's finest stage has stride 4: 16 x 16 cells at 64 px, 8 x 8 at 32 px.
    assert pipe.scorer.config.feature_gaussian_grid == [16, 16]
    assert coarse.scorer.config.feature_gaussian_grid == [8, 8]
    out = pipe(query, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.anomaly_maps.shape == (1, 2 * RES, 2 * RES)
    pipe.save_pretrained(tmp_path)
    loaded = AnomalyDetectionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    again = loaded(query, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.equal(again.anomaly_maps, out.anomaly_maps)


def test_statistics_stored_in_float16_still_give_float32_maps():
    train, query = textures(6, seed=1), with_square(textures(1, seed=3))
    pipe = gaussian_pipeline().calibrate(train, mode="global")
    maps = pipe(query, generator=torch.Generator().manual_seed(0)).anomaly_maps
    pipe.scorer.to(torch.float16)  # as a folder shipped with float16 weights loads
    half = pipe(query, generator=torch.Generator().manual_seed(0)).anomaly_maps
    assert half.dtype == np.float32 and np.allclose(half, maps, rtol=2e-2, atol=2e-2)
