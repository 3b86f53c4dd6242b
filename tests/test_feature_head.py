"""The pipeline's "feature_head" residual: a network on pretrained features trained on synthetic defects,
with tiny random components: targets by hand, seeded training, what it learns, save/load, fusion."""

import numpy as np
import pytest
import torch
from test_baselines import textures, with_square
from test_feature_gaussian import RES, gaussian_pipeline

from diffad import AnomalyDetectionPipeline
from diffad.errors import ConfigError
from diffad.scoring import feature_head as fh
from diffad.scoring import fitting

HEAD = dict(defects_per_image=4, steps=60, train_batch_size=8)


def head_pipeline(**scorer_kwargs):
    settings = dict(feature_gaussian_weight=0.0, feature_head_weight=1.0, feature_head_hidden=16)
    return gaussian_pipeline(**{**settings, **scorer_kwargs})


def test_targets_mark_the_cells_a_mask_covers_by_the_threshold():
    masks = torch.zeros(1, 8, 8)
    masks[0, :4, :4] = 1.0  # cell (0, 0) of a 2x2 grid, whole
    masks[0, 4:6, 4] = 1.0  # 2 of cell (1, 1)'s 16 pixels: under the threshold
    masks[0, :2, 4:6] = 1.0  # 4 of cell (0, 1)'s 16: a quarter, under 0.3
    masks[0, 4:6, :3] = 1.0  # 6 of cell (1, 0)'s 16: 0.375, over it
    assert fh.defect_targets(masks, (2, 2))[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_position_statistics_match_numpy():
    e = torch.randn(7, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    mean, std = fh.position_statistics(e)
    assert np.allclose(mean.numpy(), e.numpy().mean(0), atol=1e-6)
    assert np.allclose(std.numpy(), e.numpy().std(0, ddof=1) + fh.STD_FLOOR, atol=1e-6)
    with pytest.raises(ConfigError, match="at least 2"):
        fh.position_statistics(e[:1])


def test_the_same_seed_trains_the_same_head_and_another_seed_another():
    train = textures(6, seed=1)
    heads = [fitting.fit_feature_head(head_pipeline(), train, seed=s, **HEAD).scorer for s in (3, 3, 4)]
    a, b, c = (torch.cat([p.flatten() for p in s.feature_head.parameters()]) for s in heads)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_head_learns_where_defects_are():
    from sklearn.metrics import roc_auc_score

    from diffad.synthesis.methods import synthesize

    # Faint textures: the tiny random extractor's features must tell defects from good ones.
    train, test = textures(12, seed=1) * 0.1, textures(16, seed=5) * 0.1
    pipe = fitting.fit_feature_head(
        head_pipeline(), train, seed=0, defects_per_image=8, steps=300, train_batch_size=16
    )
    defects = [synthesize(x, "mix", torch.Generator().manual_seed(1000 + i)) for i, x in enumerate(test)]
    masks = np.stack([d.mask.reshape(RES, RES).numpy() > 0.5 for d in defects])
    maps = pipe(
        torch.stack([d.image for d in defects]), generator=torch.Generator().manual_seed(0)
    ).anomaly_maps
    assert roc_auc_score(masks.ravel(), maps.ravel()) > 0.75  # unseen defects on unseen images
    # A bright square is not among the generator's defects; the head still marks it.
    square = pipe(with_square(test), generator=torch.Generator().manual_seed(0)).anomaly_maps
    assert square[:, 10:20, 12:22].mean() > square.mean() + 0.2


def test_calibrate_trains_the_head_records_its_statistics_and_round_trips(tmp_path):
    train, query = textures(10, seed=1), with_square(textures(2, seed=3))
    pipe = head_pipeline(pixel_weight=1.0, smoothing_sigma=1.0)
    pipe.calibrate(
        train[:4], mode="global", gaussian_images=train[4:], generator=torch.Generator().manual_seed(0)
    )
    scorer = pipe.scorer
    assert scorer.has_feature_head and scorer.config.feature_head_grid == [8, 8]
    # Trained on the 6 other good images: their per-position statistics are the head's.
    embedding = fitting.embeddings(pipe, list(train[4:]), 8)
    assert torch.allclose(scorer.head_mean, embedding.mean(0), atol=1e-5)
    mean, std = scorer.head_calibration
    assert torch.allclose(mean, mean[0, 0]) and 0 < mean[0, 0] < 1 and std[0, 0] != 1
    maps = pipe(query, generator=torch.Generator().manual_seed(0)).anomaly_maps
    pipe.save_pretrained(tmp_path / "p")
    loaded = AnomalyDetectionPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(loaded(query, generator=torch.Generator().manual_seed(0)).anomaly_maps, maps)
    # With its weight at 0 the trained head is kept but not used.
    loaded.scorer.register_to_config(feature_head_weight=0.0)
    assert "feature_head" not in loaded.scorer.active_residuals(latent=True, feature=True)


def test_without_weight_no_head_is_trained_and_a_wrong_grid_is_named():
    train = textures(6, seed=1)
    pipe = head_pipeline(feature_head_weight=0.0, pixel_weight=1.0).calibrate(train, mode="global")
    assert not pipe.scorer.has_feature_head and pipe.scorer.feature_head is None
    trained = fitting.fit_feature_head(head_pipeline(), train, seed=0, **HEAD)
    trained(textures(1, seed=2, size=2 * RES))  # resized to the working resolution: fine
    trained.scorer.register_to_config(feature_gaussian_resolution=2 * RES)  # features on a finer grid
    with pytest.raises(ConfigError, match="calibrate the pipeline again"):
        trained(textures(1, seed=2, size=2 * RES))


def test_gaussians_and_head_fitted_together_equal_each_fitted_alone():
    train = textures(6, seed=1)
    both = head_pipeline(feature_gaussian_weight=1.0)
    both.calibrate(train, mode="none", feature_head_steps=20)  # one feature pass serves both
    alone = head_pipeline(feature_gaussian_weight=1.0)
    fitting.fit_feature_head(fitting.fit_feature_gaussian(alone, train), train, seed=0, steps=20)
    for name in ("gaussian_mean", "gaussian_precision", "head_mean", "head_std"):
        assert torch.equal(getattr(both.scorer, name), getattr(alone.scorer, name)), name
    for a, b in zip(both.scorer.feature_head.parameters(), alone.scorer.feature_head.parameters()):
        assert torch.equal(a, b)
