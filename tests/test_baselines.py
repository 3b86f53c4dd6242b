"""PaDiM and PatchCore on a tiny random extractor: statistics against numpy / scikit-learn, maps at the
input size, seeded coresets, save/load, `fit_baseline`, and map fusion."""

import json

import numpy as np
import pytest
import torch
from data_trees import make_mvtec_tree
from sklearn.neighbors import NearestNeighbors

from diffad import AnomalyDetectionOutput
from diffad.baselines import PaDiM, PatchCore, greedy_coreset
from diffad.baselines.fit import fit_baseline
from diffad.baselines.fusion import fit_fusion, fuse_maps
from diffad.errors import ConfigError, OutputExistsError
from diffad.models.efficientnet import EfficientNetLiteFeatures


def tiny_extractor(seed: int = 0):
    torch.manual_seed(seed)
    return EfficientNetLiteFeatures(
        width_multiplier=0.25, depth_multiplier=0.34, out_stages=(1, 2), stem_channels=8
    ).eval()


def textures(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 0.4 - 0.2


def with_square(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[:, :, 10:20, 12:22] = 1.0
    return out


def test_padim_gaussians_match_numpy_and_find_a_square():
    train = textures(12, seed=1)
    padim = PaDiM(tiny_extractor(), resolution=32, projection_dim=6, epsilon=0.01, sigma=1.0)
    padim.fit([train], generator=torch.Generator().manual_seed(0), batch_size=5, progress=False)

    # Reference: numpy mean and covariance of the projected embedding at every grid position.
    z = torch.einsum("ndhw,dk->nhwk", padim.embed(train), padim.projection).flatten(1, 2).double().numpy()
    for p in (0, 7, z.shape[1] - 1):
        assert np.allclose(padim.mean[p].numpy(), z[:, p].mean(0), atol=1e-5)
        cov = np.cov(z[:, p], rowvar=False) + 0.01 * np.eye(6)
        assert np.allclose(padim.precision[p].double().numpy(), np.linalg.inv(cov), rtol=1e-3, atol=1e-3)

    good, bad = textures(4, seed=2), with_square(textures(4, seed=3))
    out = padim(torch.cat([good, bad]))
    assert out.anomaly_maps.shape == (8, 32, 32) and out.anomaly_scores.shape == (8,)
    assert out.anomaly_scores[4:].min() > out.anomaly_scores[:4].max()
    assert out.reconstructions is None
    assert isinstance(out, AnomalyDetectionOutput)  # the detection pipeline's own output class
    maps, scores, recon = padim(good, return_dict=False)
    assert np.array_equal(maps, out.anomaly_maps[:4]) and recon is None


def test_maps_come_back_at_each_input_size():
    padim = PaDiM(tiny_extractor(), resolution=32).fit([textures(4, 1)], progress=False)
    out = padim(torch.rand(2, 1, 40, 24) * 2 - 1, output_type="pt")
    assert tuple(out.anomaly_maps.shape) == (2, 40, 24) and isinstance(out.anomaly_maps, torch.Tensor)
    mixed = padim([np.zeros((20, 30), np.uint8), np.zeros((16, 16, 3), np.float32)])
    assert [m.shape for m in mixed.anomaly_maps] == [(20, 30), (16, 16)]


def test_greedy_coreset_is_farthest_point_sampling():
    points = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    chosen = greedy_coreset(points, 12, projection_dim=0, generator=torch.Generator().manual_seed(3)).tolist()
    # Reference loop: each new point is the one farthest from all chosen so far.
    x = points.double().numpy()
    expected = [chosen[0]]
    for _ in range(11):
        d = np.min(((x[:, None] - x[expected][None]) ** 2).sum(-1), axis=1)
        expected.append(int(d.argmax()))
    assert chosen == expected


def test_same_seed_same_coreset():
    points = torch.randn(500, 40, generator=torch.Generator().manual_seed(0))

    def pick(seed):
        return greedy_coreset(points, 30, projection_dim=8, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(pick(5), pick(5))
    assert not torch.equal(pick(5), pick(6))


def test_patchcore_distances_match_sklearn_nearest_neighbours():
    core = PatchCore(
        tiny_extractor(), resolution=32, coreset_ratio=0.25, calibration_fraction=0, border_pad=8, sigma=1.0
    )
    core.fit([textures(6, seed=1)], progress=False)
    emb = core.embed(textures(2, seed=4))
    assert emb.shape[-2:] == (8, 8)  # the mirrored margin is cropped off the stride-4 grid
    ours = core._patch_scores(emb).flatten().numpy()
    queries = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).numpy()
    ref, _ = NearestNeighbors(n_neighbors=1).fit(core.memory_bank.numpy()).kneighbors(queries)
    assert np.allclose(ours, ref[:, 0], atol=1e-4)
    assert len(core.memory_bank) == round(6 * 64 * 0.25)


def test_patchcore_calibration_divides_by_held_out_distances():
    train = textures(10, seed=1)
    core = PatchCore(tiny_extractor(), resolution=32, coreset_ratio=0.5, calibration_fraction=0.2, sigma=1.0)
    core.fit([train], generator=torch.Generator().manual_seed(0), progress=False)
    assert len(core.memory_bank) == round(8 * 64 * 0.5)  # 2 of 10 images held out of the bank
    emb = core.embed(train)
    flat = emb.permute(0, 2, 3, 1).reshape(10, 64, -1).numpy()
    neighbours = NearestNeighbors(n_neighbors=1).fit(core.memory_bank.numpy())
    dist = np.stack([neighbours.kneighbors(f)[0][:, 0] for f in flat])  # (10, 64)
    # The two held-out images are the ones with no patch in the bank; the scale is their mean distance.
    held = np.argsort(dist.min(1))[-2:]
    assert np.all(dist[held].min(1) > 1e-4) and np.sum(dist.min(1) < 1e-5) == 8
    assert np.allclose(core.position_scale.flatten().numpy(), dist[held].mean(0), rtol=1e-4)
    ours = core._patch_scores(emb[held]).flatten(1).numpy()
    assert np.allclose(ours, dist[held] / dist[held].mean(0), rtol=1e-3)

    out = core(torch.cat([textures(3, 5), with_square(textures(3, 6))]))
    assert out.anomaly_maps.shape == (6, 32, 32)
    assert out.anomaly_scores[3:].min() > out.anomaly_scores[:3].max()


def test_patchcore_reweighting_keeps_weights_in_range():
    core = PatchCore(
        tiny_extractor(), resolution=32, coreset_ratio=0.5, border_pad=0, reweight=True, num_neighbors=3
    )
    core.fit([textures(4, seed=1)], progress=False)
    emb = core.embed(textures(2, seed=2))
    plain = core._patch_scores(emb)
    core.config["reweight"] = False
    assert torch.all(plain <= core._patch_scores(emb) + 1e-6)  # 0 < w <= 1 scales the whole map


@pytest.mark.parametrize("cls", [PaDiM, PatchCore])
def test_save_load_round_trip(cls, tmp_path):
    det = cls(tiny_extractor(), resolution=32, border_pad=8).fit([textures(4, 1)], progress=False)
    det.save_pretrained(tmp_path / "det")
    meta = json.loads((tmp_path / "det" / "detector_config.json").read_text())
    assert meta["class"] == cls.__name__ and meta["border_pad"] == 8
    assert (tmp_path / "det" / "detector.safetensors").is_file()
    loaded = cls.from_pretrained(tmp_path / "det")
    x = textures(2, 9)
    assert np.array_equal(det(x).anomaly_maps, loaded(x).anomaly_maps)
    other = PatchCore if cls is PaDiM else PaDiM
    with pytest.raises(ConfigError, match="different detector"):
        other.from_pretrained(tmp_path / "det")


def test_unfitted_and_bad_options_raise():
    with pytest.raises(ConfigError, match="not fitted"):
        PaDiM(tiny_extractor(), resolution=32)(textures(1, 0))
    with pytest.raises(ConfigError, match="border_pad"):
        PatchCore(tiny_extractor(), resolution=32, border_pad=32)
    with pytest.raises(ConfigError, match="coreset_ratio"):
        PatchCore(tiny_extractor(), resolution=32, coreset_ratio=0)
    core = PatchCore(tiny_extractor(), resolution=32).fit([textures(3, 0)], progress=False)
    with pytest.raises(ConfigError, match="fitted resolution"):
        core._patch_scores(core.embed(textures(1, 0, size=64)[:, :, :48]))


def test_fit_baseline_end_to_end(tmp_path, monkeypatch):
    make_mvtec_tree(tmp_path / "data", size=32, n_train=4)
    monkeypatch.setattr(
        EfficientNetLiteFeatures, "from_wheel", classmethod(lambda cls, variant="lite0": tiny_extractor())
    )
    out = tmp_path / "padim"
    fit_baseline("padim", str(tmp_path / "data"), "widget", out, resolution=32, progress=False)
    meta = json.loads((out / "detector_config.json").read_text())
    assert meta["class"] == "PaDiM" and meta["_fitted_on"]["train_images"] == 4
    assert PaDiM.from_pretrained(out)(textures(1, 0)).anomaly_maps.shape == (1, 32, 32)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        fit_baseline("padim", str(tmp_path / "data"), "widget", out, resolution=32, progress=False)
    fit_baseline(
        "patchcore",
        str(tmp_path / "data"),
        "widget",
        out,
        resolution=32,
        overwrite=True,
        progress=False,
        border_pad=8,
    )
    assert json.loads((out / "detector_config.json").read_text())["class"] == "PatchCore"
    with pytest.raises(ConfigError, match="unknown reference detector"):
        fit_baseline("knn", str(tmp_path / "data"), "widget", tmp_path / "x", resolution=32)


def test_fusion_normalises_by_good_statistics():
    good_a = np.array([[[1.0, 3.0]], [[1.0, 3.0]]])  # mean 2, std 1
    good_b = np.array([[[10.0, 30.0]], [[10.0, 30.0]]])  # mean 20, std 10
    stats = fit_fusion({"a": good_a, "b": good_b})
    maps = {"a": np.array([[[4.0, 2.0]]]), "b": np.array([[[20.0, 50.0]]])}
    assert np.allclose(fuse_maps(maps, stats, "sum"), [[[2.0 + 0.0, 0.0 + 3.0]]])
    assert np.allclose(fuse_maps(maps, stats, "max"), [[[2.0, 3.0]]])
    per_pixel = fit_fusion(
        {"a": np.array([[[0.0, 2.0]], [[2.0, 6.0]]])}, per_pixel=True
    )  # means 1, 4; stds 1, 2
    assert np.allclose(fuse_maps({"a": np.array([[[3.0, 3.0]]])}, per_pixel), [[[2.0, -0.5]]])
    with pytest.raises(ConfigError, match="no good-image statistics"):
        fuse_maps({"c": good_a}, stats)
