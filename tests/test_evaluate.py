"""`diffad evaluate` end to end: a tiny calibrated pipeline and a tiny PaDiM on tiny MVTec trees."""

import csv
import json

import numpy as np
import pytest
import torch
from data_trees import make_mvtec_tree
from diffad.pipelines.pipeline_anomaly_detection import AnomalyDetectionPipeline
from diffusers import DDIMScheduler

from diffad.cli import main
from diffad.data import AnomalyDataset, load_samples
from diffad.errors import ConfigError
from diffad.metrics import METRIC_KEYS, compute_metrics
from diffad.models import build_autoencoder, build_unet
from diffad.report.evaluate import load_detector, spread
from diffad.scoring.scorer import AnomalyScorer

SIZE = 16


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    make_mvtec_tree(
        root, "widget", size=32, n_train=4, n_good_test=3, n_defect=2, defect_types=("hole", "scratch")
    )
    make_mvtec_tree(root, "gadget", size=32, n_train=4, n_good_test=2, n_defect=2, seed=1)
    return root


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, data_root):
    """A tiny latent pipeline (random weights), its residuals calibrated on the good training images."""
    torch.manual_seed(0)
    pipe = AnomalyDetectionPipeline(
        unet=build_unet("tiny", in_channels=4, sample_size=SIZE // 4),
        scheduler=DDIMScheduler(num_train_timesteps=100),
        scorer=AnomalyScorer(resolution=SIZE, num_inference_steps=2, noise="gaussian", smoothing_sigma=1.0),
        vae=build_autoencoder("tiny", "kl"),
    )
    pipe.set_progress_bar_config(disable=True)
    train = AnomalyDataset(load_samples(data_root, "widget", split="train"), SIZE)
    pipe.calibrate(
        [train[i]["image"] for i in range(len(train))], torch.Generator().manual_seed(0), mode="global"
    )
    folder = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(folder)
    return folder


def read_scores(out):
    with open(out / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_three_outputs_for_every_category(pipeline_dir, data_root, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(pipeline_dir), "--data", str(data_root), "--output_dir", str(out)]
    assert main([*argv, "--batch_size", "4", "--cases", "2"]) == 0
    printed = capsys.readouterr().out
    assert "gadget" in printed and "widget" in printed and "mean" in printed and "report.html" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    for key in (*METRIC_KEYS, "per_defect", "num_images", "seconds_per_image", "settings", "per_category"):
        assert key in metrics, key
    assert metrics["num_images"] == 3 + 4 + 2 + 2
    assert set(metrics["per_defect"]) == {"widget/hole", "widget/scratch", "gadget/scratch"}
    assert metrics["seconds_per_image"] > 0
    assert metrics["settings"]["detectors"]["widget"]["scorer"]["resolution"] == SIZE
    assert metrics["settings"]["detectors"]["widget"]["scorer"]["calibration"] == "global"

    rows = read_scores(out)
    assert len(rows) == metrics["num_images"]
    assert {r["category"] for r in rows} == {"widget", "gadget"}
    # The written metrics are those of the written scores (image level), recomputed independently.
    widget = [r for r in rows if r["category"] == "widget"]
    want = compute_metrics([float(r["score"]) for r in widget], [int(r["label"]) for r in widget])
    assert metrics["per_category"]["widget"]["image_auroc"] == pytest.approx(want["image_auroc"])

    page = (out / "report.html").read_text()
    assert "<td>widget</td>" in page and "<td>gadget</td>" in page and "reconstruction" in page
    assert page.count("data:image/png;base64,") == 2 * (2 + 4 * 4)  # figures + 4 cases x 4 tiles each

    # A rerun may write into its own folder; the same seed gives each image the same noise.
    assert main([*argv, "--category", "widget", "--limit", "4", "--resolution", str(SIZE)]) == 0
    again = read_scores(out)
    assert len(again) == 4 and {r["defect_type"] for r in again} == {"good", "hole", "scratch"}
    before = {r["path"]: float(r["score"]) for r in widget}
    # Per-image noise: equal up to float rounding of other batch shapes.
    assert [float(r["score"]) for r in again] == pytest.approx([before[r["path"]] for r in again], rel=1e-5)


def test_refuses_a_folder_it_did_not_make(pipeline_dir, data_root, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    argv = ["evaluate", "--model", str(pipeline_dir), "--data", str(data_root), "--output_dir", str(out)]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_reference_detector_plugs_in(data_root, tmp_path):
    from diffad.baselines import PaDiM
    from diffad.models.efficientnet import EfficientNetLiteFeatures

    torch.manual_seed(0)
    extractor = EfficientNetLiteFeatures(
        width_multiplier=0.25, depth_multiplier=0.34, out_stages=(1, 2), stem_channels=8
    )
    padim = PaDiM(extractor.eval(), resolution=32, projection_dim=6, sigma=1.0)
    train = AnomalyDataset(load_samples(data_root, "gadget", split="train"), 32)
    padim.fit([torch.stack([train[i]["image"] for i in range(len(train))])], progress=False)
    padim.save_pretrained(tmp_path / "padim")
    assert isinstance(load_detector(tmp_path / "padim", "cpu"), PaDiM)

    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(tmp_path / "padim"), "--data", str(data_root), "--category", "gadget"]
    assert main([*argv, "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["detectors"]["gadget"]["detector"] == "PaDiM"
    assert metrics["num_images"] == 4 and metrics["pixel_auroc"] is not None
    page = (out / "report.html").read_text()
    assert "reconstruction" not in page  # PaDiM reconstructs nothing: no such column


def test_load_detector_says_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_detector(tmp_path / "missing")
    with pytest.raises(ConfigError, match="model_index.json, detector_config.json"):
        load_detector(tmp_path)
    (tmp_path / "detector_config.json").write_text(json.dumps({"class": "os"}))
    with pytest.raises(ConfigError, match="not one of diffad.baselines"):
        load_detector(tmp_path)


def test_spread_keeps_both_ends():
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread([1, 2], 5) == [1, 2]
    assert np.array_equal(spread(list("abc"), None), list("abc"))


def test_latent_only_pipeline_decodes_only_the_shown_cases_with_their_own_noise(pipeline_dir, data_root):
    from diffad.report.evaluate import case_candidates, run_category
    from diffad.report.results import select_cases, summarize
    from diffad.training.calibration import configure_scorer

    pipe = load_detector(pipeline_dir)
    configure_scorer(pipe, {"pixel_weight": 0.0, "ssim_weight": 0.0})
    samples = load_samples(data_root, "widget", split="test")
    fast = run_category(pipe, "widget", samples, SIZE, 4, seed=3, progress=False, num_cases=2)
    assert isinstance(fast.reconstructions, dict)
    assert sorted(fast.reconstructions) == case_candidates(fast.labels, fast.scores, 2)
    threshold = summarize(fast).threshold
    best, worst = select_cases(fast, threshold, 2)
    assert set(best + worst) <= set(fast.reconstructions)
    # The same reconstructions (and maps) as a run that decodes every image.
    pipe.scorer.register_to_config(pixel_weight=1.0)
    pipe.scorer.calibration_std[0] = float("inf")  # pixel residual decodes everything, adds 0 to the map
    full = run_category(pipe, "widget", samples, SIZE, 4, seed=3, progress=False, num_cases=2)
    assert sorted(full.reconstructions) == sorted(fast.reconstructions)  # only the candidates are kept
    for i, recon in fast.reconstructions.items():
        np.testing.assert_array_equal(recon, full.reconstructions[i])
    np.testing.assert_allclose(np.stack(fast.maps), np.stack(full.maps), atol=1e-5)


def test_case_candidates_cover_every_threshold():
    from diffad.report.evaluate import case_candidates
    from diffad.report.results import CategoryResults, select_cases

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30, int), np.ones(11, int)]
    scores = rng.normal(size=41) + labels
    results = CategoryResults(
        "c", [f"{i}" for i in range(41)], labels, ["d"] * 41, scores, [np.zeros((2, 2))] * 41, None
    )
    covered = set(case_candidates(labels, scores, 4))
    for threshold in np.linspace(-3, 4, 29):
        best, worst = select_cases(results, float(threshold), 4)
        assert set(best + worst) <= covered


def test_streamed_pixel_metrics_past_the_memory_budget(pipeline_dir, data_root, tmp_path, capsys):
    argv = ["evaluate", "--model", str(pipeline_dir), "--data", str(data_root), "--category", "widget"]
    assert main([*argv, "--output_dir", str(tmp_path / "exact")]) == 0
    assert "streamed histograms" not in capsys.readouterr().out
    assert main([*argv, "--output_dir", str(tmp_path / "streamed"), "--metrics_memory", "0"]) == 0
    assert "come from streamed histograms" in capsys.readouterr().out
    exact, streamed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("exact", "streamed"))
    assert exact["per_category"]["widget"]["pixel_metrics"] == "exact"
    assert streamed["per_category"]["widget"]["pixel_metrics"] == "streamed"
    for key in METRIC_KEYS:
        assert streamed[key] == pytest.approx(exact[key], abs=1e-3), key
    assert (tmp_path / "exact" / "scores.csv").read_text() == (
        tmp_path / "streamed" / "scores.csv"
    ).read_text()
    # The same cases are shown, from the maps kept for them alone.
    pages = [(tmp_path / d / "report.html").read_text() for d in ("exact", "streamed")]
    assert pages[0].count("data:image/png;base64,") == pages[1].count("data:image/png;base64,")
    assert main([*argv, "--output_dir", str(tmp_path / "x"), "--metrics_memory", "lots"]) == 2
    assert "--metrics_memory" in capsys.readouterr().err


def test_a_device_this_machine_lacks_is_one_line(pipeline_dir, data_root, tmp_path, capsys):
    argv = [
        "evaluate",
        "--model",
        str(pipeline_dir),
        "--data",
        str(data_root),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    for device in ["foo"] + ([] if torch.cuda.is_available() else ["cuda"]):
        assert main([*argv, "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--device {device}" in err.replace("'", "")
    assert not (tmp_path / "o").exists()  # nothing written
