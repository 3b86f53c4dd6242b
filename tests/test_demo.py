"""`diffad demo` end to end on the ELPV package's cells, with a tiny random pipeline for speed."""

import json

import numpy as np
import pytest
import torch
from diffad.pipelines.pipeline_anomaly_detection import AnomalyDetectionPipeline
from diffusers import DDIMScheduler

from diffad.cli import main
from diffad.models import build_autoencoder, build_unet
from diffad.scoring.scorer import AnomalyScorer

SIZE = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    pipe = AnomalyDetectionPipeline(
        unet=build_unet("tiny", in_channels=4, sample_size=SIZE // 4),
        scheduler=DDIMScheduler(num_train_timesteps=100),
        scorer=AnomalyScorer(resolution=SIZE, num_inference_steps=2, noise="gaussian", smoothing_sigma=1.0),
        vae=build_autoencoder("tiny", "kl", in_channels=1),
    )
    folder = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(folder)
    return folder


def test_demo_writes_both_reports_and_prints_the_table(model_dir, tmp_path, capsys):
    out = tmp_path / "demo_output"
    argv = ["demo", "--model", str(model_dir), "--output_dir", str(out), "--limit", "6"]
    assert main([*argv, "--num_synthetic", "3"]) == 0
    printed = capsys.readouterr().out
    assert "image_auroc" in printed and "synthetic defects" in printed
    assert f"report: {out / 'index.html'}" in printed
    real = json.loads((out / "real" / "metrics.json").read_text())
    synthetic = json.loads((out / "synthetic" / "metrics.json").read_text())
    assert real["num_images"] == 6 and real["pixel_auroc"] is None  # ELPV: image labels only
    assert synthetic["pixel_auroc"] is not None and 0.0 <= synthetic["aupro"] <= 1.0
    page = (out / "index.html").read_text()
    assert 'href="real/report.html"' in page and 'href="synthetic/report.html"' in page
    # The demo's own folder is reused on a rerun.
    assert main([*argv, "--num_synthetic", "3"]) == 0


def test_demo_refuses_a_folder_it_did_not_make(model_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["demo", "--model", str(model_dir), "--output_dir", str(out)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_demo_says_how_to_get_a_model(tmp_path, capsys):
    code = main(["demo", "--model", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "diffad demo --train" in capsys.readouterr().err


def test_shipped_model_is_small_and_detects():
    from diffad.data import load_samples
    from diffad.demo import DEFAULT_MODEL

    size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
    assert size < 40 * 2**20, f"{DEFAULT_MODEL} is {size / 2**20:.1f} MB"
    pipe = AnomalyDetectionPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    cells = [s.image_path for s in load_samples("elpv", category="mono", split="test")[:2]]
    out = pipe(cells, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.anomaly_maps.shape == (2, 300, 300) and np.isfinite(out.anomaly_maps).all()
    assert pipe.unet.dtype == torch.float32  # stored as float16, computed in float32


def test_train_follows_the_shipped_models_recipe(tmp_path, monkeypatch):
    import diffad.training.fit as fit
    from diffad.demo import TRAIN_MINUTES, train_model

    seen = []
    monkeypatch.setattr(fit, "run_fit", lambda args: seen.append(args) or 0)
    assert train_model(tmp_path, TRAIN_MINUTES, 3) == tmp_path / "model"
    args = seen[0]
    assert (args.data, args.category, args.resolution, args.channels) == ("elpv", "mono", 128, 1)
    assert args.features == "lite0" and args.feature_dim == 64 and args.num_inference_steps == 3
    assert args.select_images > 0
    assert args.max_minutes == TRAIN_MINUTES < 30 and args.seed == 3 and not args.resume


def test_shipped_models_weights_were_chosen_on_synthetic_defects():
    from diffad.demo import DEFAULT_MODEL

    record = json.loads((DEFAULT_MODEL / "selection.json").read_text())
    config = json.loads((DEFAULT_MODEL / "scorer" / "config.json").read_text())
    assert record["images"] >= 4 and len(record["trials"]) > 1
    assert {k: config[f"{k}_weight"] for k in record["chosen"]["weights"]} == record["chosen"]["weights"]
    assert config["deviation"] == record["chosen"]["deviation"]
    # Its thresholds were set on the same held-out cells: the fpr one flags none of the 24 good ones.
    saved = record["thresholds"]
    assert (config["threshold_fpr"], config["threshold_f1"]) == (saved["fpr"], saved["f1"])
    assert len(saved["good_scores"]) == record["images"]
    assert max(saved["good_scores"]) < config["threshold_fpr"]
