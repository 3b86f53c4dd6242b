"""`diffad detect`: maps, overlays and scores from a saved pipeline; refuses to overwrite."""

import csv

import numpy as np
import PIL.Image
import pytest
from test_pipeline import tiny_pipeline

from diffad.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    pipe = tiny_pipeline(None, channels=1)
    pipe.calibrate(np.random.default_rng(0).uniform(size=(3, 16, 16, 1)).astype(np.float32), mode="global")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "parts"
    (folder / "sub").mkdir(parents=True)
    PIL.Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / "a.png")
    PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "sub" / "b.jpg")
    single = tmp_path / "c.bmp"
    PIL.Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(single)
    return folder, single


def test_detect_writes_maps_overlays_and_scores(model_dir, inputs, tmp_path, capsys):
    folder, single = inputs
    out = tmp_path / "out"
    argv = [
        "detect",
        "--model",
        str(model_dir),
        "--input",
        str(folder),
        str(single),
        "--output_dir",
        str(out),
    ]
    assert main([*argv, "--batch_size", "2", "--seed", "3"]) == 0

    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["map_png"] for r in rows] == ["maps/parts/a.png", "maps/parts/sub/b.png", "maps/c.png"]
    first = rows[0]
    png = PIL.Image.open(out / first["map_png"])
    assert png.size == (24, 20) and np.asarray(png).dtype == np.uint16
    values = np.asarray(png, dtype=np.float64)
    assert values.min() == 0 and values.max() == 65535  # scaled per image from [map_min, map_max]
    lo, hi = float(first["map_min"]), float(first["map_max"])
    # The score is the maximum of the map at the working resolution; the saved map is at the image's
    # size, so its maximum is close to, not exactly, the score.
    assert lo < float(first["score"]) <= hi + 0.5 * (hi - lo)
    overlay = PIL.Image.open(out / first["overlay_png"])
    assert overlay.mode == "RGB" and overlay.size == (24, 20)
    assert (first["overlay_min"], first["overlay_max"]) == ("0", "5")  # calibrated: z-score range

    assert main([*argv, "--batch_size", "3", "--seed", "3"]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--batch_size", "3", "--seed", "3", "--overwrite"]) == 0
    again = list(csv.DictReader((out / "scores.csv").open()))
    np.testing.assert_allclose(
        [float(r["score"]) for r in again], [float(r["score"]) for r in rows], rtol=1e-5
    )


def test_detect_reports_bad_inputs(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    common = ["detect", "--model", str(model_dir), "--output_dir", str(tmp_path / "out")]
    assert main([*common, "--input", str(broken)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main([*common, "--input", str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["detect", "--model", str(tmp_path), "--input", str(broken), "--output_dir", "x"]) == 2
    assert "model_index.json" in capsys.readouterr().err
