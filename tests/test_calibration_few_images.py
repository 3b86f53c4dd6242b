"""Calibrating on a handful of good images (issue 20): per-pixel statistics of 8 images, and a trained
folder's feature Gaussians kept rather than refitted on them, still rank good images below defective
ones, on tiny models and on the shipped model."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_baselines import textures, with_square
from test_feature_gaussian import gaussian_pipeline
from test_pipeline import tiny_pipeline

from diffad.scoring.scorer import AnomalyScorer

ROOT = Path(__file__).resolve().parents[1]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_pixel_that_did_not_vary_among_8_images_gets_nearly_the_global_std():
    scorer = AnomalyScorer(resolution=8)
    maps = torch.rand(8, 8, 8, generator=seeded(0), dtype=torch.float64)
    maps[:, 0, 0] = maps.mean()  # its own std is 0 (test_scoring checks the formula against numpy)
    scorer.set_calibration("per_pixel", {"pixel": (8, maps.sum(0), (maps**2).sum(0))})
    # Once the floor, 0.1 of the global std: a good image's ordinary value there scored ~10.
    assert scorer.calibration_std[0, 0, 0] > 0.8 * maps.std()


def _auroc(pipe, good, bad) -> float:
    scores = pipe(torch.cat([good, bad]), generator=seeded(0)).anomaly_scores
    return roc_auc_score([0] * len(good) + [1] * len(bad), scores)


def test_tiny_model_calibrated_per_pixel_on_8_images_keeps_good_below_defective():
    pipe = tiny_pipeline("kl", channels=1, resolution=32, ssim_weight=0.0, latent_weight=0.0)
    pipe.calibrate(textures(8, seed=1), generator=seeded(1), mode="per_pixel")
    good, bad = textures(8, seed=2), with_square(textures(8, seed=3))
    assert _auroc(pipe, good, bad) == 1.0


def test_recalibrating_a_fitted_pipeline_keeps_its_gaussians():
    pipe = gaussian_pipeline()
    pipe.calibrate(textures(8, seed=1), mode="global", gaussian_images=textures(24, seed=4))
    before = {k: v.clone() for k, v in pipe.scorer.state_dict().items() if k.startswith("gaussian_")}
    pipe.calibrate(textures(8, seed=5), mode="per_pixel", generator=seeded(1))
    after = pipe.scorer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k != "gaussian_calibration")
    good, bad = textures(8, seed=2), with_square(textures(8, seed=3))
    assert _auroc(pipe, good, bad) == 1.0


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("elpv_dataset") is None, reason="the ELPV images come with elpv-dataset"
)
def test_shipped_model_calibrated_on_8_good_cells_still_ranks_defective_cells_higher():
    from diffad import AnomalyDetectionPipeline
    from diffad.data import load_samples
    from diffad.data.images import load_image

    train = [s for s in load_samples("elpv", category="mono", split="train") if s.label == 0]
    test = load_samples("elpv", category="mono", split="test")
    good = [s for s in test if s.label == 0][:8]
    bad = [s for s in test if s.label == 1][:8]
    pipe = AnomalyDetectionPipeline.from_pretrained(ROOT / "checkpoints" / "elpv-mono")
    pipe.set_progress_bar_config(disable=True)
    pipe.calibrate([load_image(s.image_path, 1) for s in train[:8]], generator=seeded(0))
    images = [load_image(s.image_path, 1) for s in good + bad]
    scores = pipe(images, generator=seeded(0), output_reconstructions=False).anomaly_scores
    # Before: 1e6 and more, good cells above defective ones (AUROC 0.37 on 20 + 20 cells).
    assert np.abs(scores).max() < 100
    assert roc_auc_score([0] * 8 + [1] * 8, scores) > 0.85
