"""Thresholds saved with a model: fitted on held-out good images, reloaded, used by detect and
evaluate; the FPR threshold keeps its promise on the images it was set on."""

import csv
import json

import numpy as np
import pytest
import torch
from data_trees import make_mvtec_tree
from sklearn.metrics import f1_score, roc_curve
from test_pipeline import tiny_pipeline

from diffad import AnomalyDetectionPipeline
from diffad.cli import main
from diffad.errors import ConfigError
from diffad.scoring import thresholds

SIZE = 16


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.3])
def test_fpr_threshold_is_the_smallest_that_keeps_the_target_and_matches_sklearns_roc(target):
    rng = np.random.default_rng(0)
    good = rng.normal(size=200).astype(np.float32)
    good[:10] = good[10]  # ties
    defective = rng.normal(1.5, 1.0, size=50).astype(np.float32)
    t = thresholds.fpr_threshold(good, target)
    assert np.mean(good >= t) <= target
    below = np.nextafter(np.float32(t), np.float32(-np.inf))  # any lower float32 score breaks it
    assert np.mean(good >= below) > target
    # Reference: the best recall sklearn's ROC reaches at a false-positive rate within the target.
    labels = np.r_[np.zeros(len(good)), np.ones(len(defective))]
    fpr, tpr, _ = roc_curve(labels, np.r_[good, defective], drop_intermediate=False)
    assert np.mean(defective >= t) == pytest.approx(tpr[fpr <= target + 1e-12].max())


def test_f1_threshold_reaches_sklearns_best_f1():
    rng = np.random.default_rng(1)
    good, defective = rng.normal(size=40), rng.normal(1.0, 1.0, size=30)
    fitted = thresholds.fit_thresholds(good, defective, 0.05)
    scores, labels = np.r_[good, defective], np.r_[np.zeros(40), np.ones(30)]
    best = max(f1_score(labels, scores >= s) for s in scores)
    assert f1_score(labels, scores >= fitted["f1"]) == pytest.approx(best)
    assert fitted["fpr_target"] == 0.05


def test_resolve_names_what_is_missing_and_reads_numbers():
    pipe = tiny_pipeline(None, channels=1)
    assert thresholds.resolve(pipe) is None  # nothing saved: no verdicts
    with pytest.raises(ConfigError, match="no saved f1 threshold"):
        thresholds.resolve(pipe, "f1")
    with pytest.raises(ConfigError, match="f1, fpr or a number"):
        thresholds.resolve(pipe, "high")
    assert thresholds.resolve(pipe, "2.5") == ("value", 2.5)
    with pytest.raises(ConfigError, match="--fpr"):
        thresholds.fpr_threshold([1.0], 1.5)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny pipeline calibrated by `calibrate_pipeline`, which chooses weights and sets thresholds on
    6 held-out good images and their synthetic defects."""
    from diffad.training.calibration import calibrate_pipeline

    root = tmp_path_factory.mktemp("thresholds")
    data = make_mvtec_tree(root / "data", size=SIZE, n_train=10, channels=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny_pipeline("kl", channels=1, resolution=SIZE).save_pretrained(root / "model")
        result = calibrate_pipeline(
            root / "model", str(data), None, mode="global", num_images=4, seed=0, select_images=6,
            settings={"num_inference_steps": 1}, fpr=0.2,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return root / "model", data, result


def test_fit_saves_both_thresholds_and_the_fpr_one_keeps_its_target(fitted):
    model, _, result = fitted
    record = json.loads((model / "selection.json").read_text())["thresholds"]
    config = AnomalyDetectionPipeline.from_pretrained(model).scorer.config
    assert config.threshold_f1 == record["f1"] and config.threshold_fpr == record["fpr"]
    assert config.threshold_fpr_target == 0.2 and config.default_threshold == "fpr"
    assert result["thresholds"] == {k: record[k] for k in ("f1", "fpr", "fpr_target", "default")}
    good = np.array(record["good_scores"])
    assert len(good) == 6 and np.mean(good >= config.threshold_fpr) <= 0.2  # at most 1 of 6
    assert np.sum(good >= config.threshold_fpr) == 1  # the smallest such threshold: exactly 1
    assert f1_score(
        np.r_[np.zeros(6), np.ones(6)], np.r_[good, record["defect_scores"]] >= config.threshold_f1
    ) == pytest.approx(
        max(f1_score(np.r_[np.zeros(6), np.ones(6)], np.r_[good, record["defect_scores"]] >= s)
            for s in np.r_[good, record["defect_scores"]])
    )  # fmt: skip


def test_pipeline_output_and_detect_use_the_saved_thresholds(fitted, tmp_path, capsys):
    model, data, _ = fitted
    pipe = AnomalyDetectionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    files = sorted((data / "test").rglob("*.png"))
    out = pipe([str(p) for p in files], generator=torch.Generator().manual_seed(0))
    threshold = pipe.scorer.config.threshold_fpr
    np.testing.assert_array_equal(out.is_defective, out.anomaly_scores >= threshold)
    assert out.is_defective.dtype == bool and len(pipe([str(files[0])], return_dict=False)) == 3

    def detect(*extra):
        target = tmp_path / f"out{len(extra)}{extra[-1] if extra else ''}"
        assert main(["detect", "--model", str(model), "--input", str(data / "test"),
                     "--output_dir", str(target), *extra]) == 0  # fmt: skip
        return list(csv.DictReader((target / "scores.csv").open()))

    for extra, value in (((), threshold), (("--threshold", "f1"), pipe.scorer.config.threshold_f1)):
        rows = detect(*extra)
        assert {float(r["threshold"]) for r in rows} == {value}
        assert [r["is_defective"] for r in rows] == [str(int(float(r["score"]) >= value)) for r in rows]
    rows = detect("--threshold=-1e9")
    assert {r["is_defective"] for r in rows} == {"1"}
    assert "defective at the value threshold" in capsys.readouterr().out


def test_recalibrating_drops_thresholds_and_detect_says_so(fitted, tmp_path, capsys):
    model, data, _ = fitted
    pipe = AnomalyDetectionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    pipe.calibrate(
        np.random.default_rng(0).uniform(size=(2, SIZE, SIZE, 1)).astype(np.float32), mode="global"
    )
    assert pipe.scorer.config.threshold_fpr is None  # they belonged to the old statistics
    pipe.save_pretrained(tmp_path / "recalibrated")
    argv = ["detect", "--model", str(tmp_path / "recalibrated"), "--input", str(data / "test")]
    assert main([*argv, "--output_dir", str(tmp_path / "a"), "--threshold", "fpr"]) == 2
    assert "no saved fpr threshold" in capsys.readouterr().err
    assert main([*argv, "--output_dir", str(tmp_path / "b")]) == 0
    assert {r["is_defective"] for r in csv.DictReader((tmp_path / "b" / "scores.csv").open())} == {""}


def test_evaluate_reports_the_rates_at_the_saved_threshold(fitted, tmp_path, capsys):
    model, data, _ = fitted
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--output_dir", str(out)]) == 0
    assert "at the saved fpr threshold" in capsys.readouterr().out
    document = json.loads((out / "metrics.json").read_text())
    at = document["at_threshold"]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    scores = np.array([float(r["score"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    flagged = scores >= at["threshold"]
    assert at["name"] == "fpr" and at["threshold"] == pytest.approx(thresholds.saved_thresholds(
        AnomalyDetectionPipeline.from_pretrained(model))["fpr"])  # fmt: skip
    assert at["fpr"] == pytest.approx(flagged[labels == 0].mean())
    assert at["recall"] == pytest.approx(flagged[labels == 1].mean())
    assert document["per_category"]["widget"]["at_threshold"] == at


def test_reference_detectors_hold_out_good_images_for_their_thresholds(tmp_path, monkeypatch):
    from test_baselines import textures, tiny_extractor

    from diffad.baselines import PaDiM
    from diffad.baselines.fit import fit_baseline
    from diffad.models.efficientnet import EfficientNetLiteFeatures

    make_mvtec_tree(tmp_path / "data", size=32, n_train=20)
    monkeypatch.setattr(
        EfficientNetLiteFeatures, "from_wheel", classmethod(lambda cls, variant="lite0": tiny_extractor())
    )
    fit_baseline("padim", str(tmp_path / "data"), "widget", tmp_path / "padim", resolution=32, progress=False)
    meta = json.loads((tmp_path / "padim" / "detector_config.json").read_text())
    assert meta["_fitted_on"]["train_images"] == 16 and meta["_thresholds"]["images"] == 4  # a fifth held out
    detector = PaDiM.from_pretrained(tmp_path / "padim")
    assert thresholds.resolve(detector) == ("fpr", meta["_thresholds"]["fpr"])
    out = detector(textures(3, 1))
    np.testing.assert_array_equal(out.is_defective, out.anomaly_scores >= meta["_thresholds"]["fpr"])
