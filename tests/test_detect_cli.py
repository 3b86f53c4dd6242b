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


def many_inputs(folder, count=7):
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    for i in range(count):
        PIL.Image.fromarray(rng.integers(0, 255, (16 + i, 18), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def outputs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_an_interrupted_detect_resumes_to_the_outputs_of_an_uninterrupted_run(
    model_dir, tmp_path, capsys, monkeypatch
):
    import diffad.scoring.detect_cli as detect_cli

    folder = many_inputs(tmp_path / "in")
    common = ["detect", "--model", str(model_dir), "--input", str(folder), "--batch_size", "2"]
    assert main([*common, "--output_dir", str(tmp_path / "whole")]) == 0
    write = detect_cli._write_image
    calls = []

    def interrupted(*args, **kwargs):
        if len(calls) == 3:  # mid-batch: images 0-2 written, the kill comes in image 3's batch
            raise KeyboardInterrupt
        calls.append(args[2])
        return write(*args, **kwargs)

    monkeypatch.setattr(detect_cli, "_write_image", interrupted)
    killed = tmp_path / "killed"
    assert main([*common, "--output_dir", str(killed)]) == 130
    assert not (killed / "scores.csv").exists() and len(list((killed / "maps").rglob("*.png"))) == 3
    with (killed / ".scores-0.partial.csv").open("a") as f:
        f.write("/cut/short.png,1.0")  # a row cut short by the kill
    monkeypatch.setattr(detect_cli, "_write_image", lambda *a, **k: calls.append(a[2]) or write(*a, **k))
    calls.clear()
    assert main([*common, "--output_dir", str(killed)]) == 0
    assert "(3 finished earlier)" in capsys.readouterr().out
    assert calls == ["in/p3", "in/p4", "in/p5", "in/p6"]  # only the unfinished images were written
    assert outputs(killed) == outputs(tmp_path / "whole")  # byte for byte, scores.csv included

    calls.clear()  # a finished run: nothing left to do
    assert main([*common, "--output_dir", str(killed)]) == 0 and calls == []
    assert outputs(killed) == outputs(tmp_path / "whole")
    assert main([*common, "--output_dir", str(killed), "--seed", "1"]) == 2  # other settings: refuses
    assert "other settings" in capsys.readouterr().err


def test_bf16_autocast_and_devices(model_dir, inputs, tmp_path, capsys):
    import torch

    folder, _ = inputs
    common = ["detect", "--model", str(model_dir), "--input", str(folder)]
    assert main([*common, "--output_dir", str(tmp_path / "fp32")]) == 0
    assert main([*common, "--output_dir", str(tmp_path / "bf16"), "--mixed_precision", "bf16"]) == 0
    a, b = (list(csv.DictReader((tmp_path / d / "scores.csv").open())) for d in ("fp32", "bf16"))
    np.testing.assert_allclose([float(r["score"]) for r in b], [float(r["score"]) for r in a], rtol=0.05)
    assert [float(r["score"]) for r in b] != [float(r["score"]) for r in a]  # it did run in bf16
    capsys.readouterr()
    for device in ["foo"] + ([] if torch.cuda.is_available() else ["cuda"]):
        assert main([*common, "--output_dir", str(tmp_path / "dev"), "--device", device]) == 2
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and "--device" in captured.err, captured.err
        assert "Traceback" not in captured.err
