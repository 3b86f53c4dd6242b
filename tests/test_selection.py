"""Residual weights chosen on synthetic defects made on held-out good training images."""

import json

import torch
from test_pipeline import tiny_pipeline

from diffad import AnomalyDetectionPipeline
from diffad.scoring.scorer import AnomalyScorer
from diffad.training import selection

SIZE = 32


def test_grid_tries_every_weight_and_deviation_once():
    settings = selection.grid(["pixel", "ssim"])
    # 3 x 3 weight pairs, all-zero left out (nothing to detect with), 3 deviations each.
    assert len(settings) == 8 * 3
    assert len({json.dumps(s, sort_keys=True) for s in settings}) == len(settings)
    fused = selection.grid(["pixel", "ssim"], ["feature_gaussian"])
    assert len(fused) == 2 * 8 * 3 + 1  # with and without the Gaussians, and the Gaussians alone
    assert {s["weights"]["feature_gaussian"] for s in fused} == {0.0, 1.0}
    both = selection.grid(["pixel", "ssim"], ["feature_gaussian", "feature_head"])
    assert len(both) == 4 * 8 * 3 + 3  # each pair of the two maps' weights; each map alone, both alone
    alone = [s["weights"] for s in both if not s["weights"]["pixel"] and not s["weights"]["ssim"]]
    assert sorted((w["feature_gaussian"], w["feature_head"]) for w in alone) == [(0, 1), (1, 0), (1, 1)]


class KnownResiduals:
    """Stands in for a pipeline: "ssim" is *lower* exactly where an image differs from its good twin
    (a defect the model reproduces better than the texture, as on DAGM), "pixel" is noise."""

    vae = None
    feature_extractor = None

    def __init__(self, good: torch.Tensor):
        self.good = good
        self.scorer = AnomalyScorer(resolution=SIZE, smoothing_sigma=0.0)

    def residual_maps(self, images, generator=None, batch_size=8):
        x = torch.stack(list(images))
        twins = torch.cat([self.good, self.good])
        changed = (x - twins).abs().mean(1)
        noise = torch.rand(changed.shape, generator=torch.Generator().manual_seed(1))
        return {"pixel": noise, "ssim": 1.0 - changed + 0.05 * noise.flip(0)}


def test_selection_finds_the_residual_and_the_direction_that_separate_the_synthetic_defects():
    good = torch.rand(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pipe = KnownResiduals(good)
    record = selection.select_settings(pipe, good, seed=0)
    config = pipe.scorer.config
    assert config.pixel_weight == 0.0 and config.ssim_weight > 0
    assert config.deviation in ("lower", "both")
    assert record["chosen"]["pixel_auroc"] > 0.9
    # A different direction of the same residual scores worse: the choice is not a tie.
    higher = [t for t in record["trials"] if t["deviation"] == "higher" and t["weights"]["pixel"] == 0]
    assert max(t["objective"] for t in higher) < record["chosen"]["objective"] - 0.1


def test_defects_are_seeded_and_masks_mark_changed_pixels():
    good = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 2 - 1
    a, mask_a = selection.make_defects(good, seed=4)
    b, mask_b = selection.make_defects(good, seed=4)
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
    assert mask_a.shape == (3, SIZE, SIZE) and mask_a.sum() > 0
    outside = mask_a[:, None] == 0
    assert torch.allclose(a[outside], good[outside], atol=1e-6)  # nothing changes off the mask


def test_calibration_chooses_weights_on_held_out_images_and_records_why(tmp_path):
    from data_trees import make_mvtec_tree

    from diffad.training.calibration import SELECTION_FILE, calibrate_pipeline

    data = make_mvtec_tree(tmp_path / "data", size=SIZE, n_train=10, channels=1)
    tiny_pipeline("kl", channels=1, resolution=SIZE).save_pretrained(tmp_path / "p")
    result = calibrate_pipeline(
        tmp_path / "p", str(data), None, mode="global", num_images=4, seed=0, select_images=6,
        settings={"num_inference_steps": 1},
    )  # fmt: skip
    record = json.loads((tmp_path / "p" / SELECTION_FILE).read_text())
    assert record["images"] == 6 and result["selection"] == record["chosen"]
    assert len(record["trials"]) == len(selection.grid(["pixel", "ssim", "latent"]))
    config = AnomalyDetectionPipeline.from_pretrained(tmp_path / "p").scorer.config
    assert config.num_inference_steps == 1 and config.calibration == "global"
    assert config.deviation == record["chosen"]["deviation"]
    assert {n: config[f"{n}_weight"] for n in ("pixel", "ssim", "latent")} == record["chosen"]["weights"]
    # Every candidate was calibrated, so a weight switched on later is standardised too.
    assert (
        torch.count_nonzero(
            AnomalyDetectionPipeline.from_pretrained(tmp_path / "p").scorer.calibration_std[:3] - 1
        )
        > 0
    )


def test_best_keeps_the_simplest_setting_within_the_tolerance_and_filters_families():
    trials = [
        {"weights": {"pixel": 1.0, "ssim": 1.0}, "objective": 0.805},
        {"weights": {"pixel": 0.0, "ssim": 1.0}, "objective": 0.8},
        {"weights": {"pixel": 1.0, "ssim": 0.0}, "objective": 0.7},
    ]
    assert selection.best(trials) is trials[1]  # 0.005 worse, one residual fewer
    assert selection.best(trials, tolerance=0.001) is trials[0]
    assert selection.best(trials, where=lambda w: w["ssim"] == 0) is trials[2]
    assert selection.best(trials, where=lambda w: w["pixel"] > 5) is None


def test_selection_still_chooses_when_no_setting_separates_anything():
    class Flat(KnownResiduals):
        def residual_maps(self, images, generator=None, batch_size=8):
            flat = torch.zeros(len(images), SIZE, SIZE)
            return {"pixel": flat, "ssim": flat.clone()}

    good = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    pipe = Flat(good)
    record = selection.select_settings(pipe, good, seed=0)
    assert all(t["image_auroc"] == 0.5 for t in record["trials"])
    # Nothing separates: the simplest setting (one residual) is kept.
    assert sum(w > 0 for w in record["chosen"]["weights"].values()) == 1
