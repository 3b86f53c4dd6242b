"""What a new user hits (issue 20): devices, folders one command writes and another must take,
options out of range, odd images and masks, and messages that name the file and the fix."""

import csv
import json
import re
import shutil

import numpy as np
import PIL.Image
import pytest
import test_detect_cli
import torch
from data_trees import make_mvtec_tree
from test_pipeline import tiny_pipeline

from diffad.cli import main
from diffad.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def padim_dir(tmp_path_factory):
    """A PaDiM folder as `diffad fit --method padim` writes it (tiny random extractor)."""
    from diffad.baselines import PaDiM
    from diffad.models.efficientnet import EfficientNetLiteFeatures

    torch.manual_seed(0)
    extractor = EfficientNetLiteFeatures(
        width_multiplier=0.25, depth_multiplier=0.34, out_stages=(1, 2), stem_channels=8
    )
    padim = PaDiM(extractor.eval(), resolution=32, projection_dim=6, sigma=1.0)
    padim.fit([torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1], progress=False)
    folder = tmp_path_factory.mktemp("padim")
    padim.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec_tree(
        tmp_path_factory.mktemp("data"), "widget", size=32, n_train=4, n_good_test=2, n_defect=2
    )


model_dir = test_detect_cli.model_dir  # the fixture: a tiny calibrated pipeline folder


def image_file(path, size=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8)).save(path)
    return path


def one_line_error(capsys, *words):
    err = capsys.readouterr().err  # progress bars may come before the message
    assert "Traceback" not in err and len([x for x in err.splitlines() if "error:" in x]) == 1, err
    for word in words:
        assert word in err, err
    return err


# --- item 3: devices ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["foo", "cuda:99" if torch.cuda.is_available() else "cuda"])
def test_a_device_that_is_not_there_is_one_line_in_every_command(model_dir, data, tmp_path, capsys, device):
    image = image_file(tmp_path / "a.png")
    out = str(tmp_path / "out")
    commands = [
        ["detect", "--model", str(model_dir), "--input", str(image), "--output_dir", out],
        ["evaluate", "--model", str(model_dir), "--data", str(data), "--output_dir", out],
        ["synthesize", "--input", str(data / "train" / "good"), "--output_dir", out, "--num", "1"],
    ]
    for argv in commands:
        assert main([*argv, "--device", device]) == 2, argv
        one_line_error(capsys, "--device")
    assert not (tmp_path / "out").exists()  # refused before anything was written


# --- item 9: every folder fit writes works with detect, evaluate and Python -------------------------


def test_detect_and_python_take_a_padim_folder(padim_dir, tmp_path, capsys):
    import diffad
    from diffad import AnomalyDetectionPipeline

    image = image_file(tmp_path / "a.png", (24, 20))
    out = tmp_path / "out"
    assert main(["detect", "--model", str(padim_dir), "--input", str(image), "--output_dir", str(out)]) == 0
    row = next(csv.DictReader((out / "scores.csv").open()))
    assert PIL.Image.open(out / row["map_png"]).size == (24, 20)
    assert (row["overlay_min"], row["overlay_max"]) == (row["map_min"], row["map_max"])  # uncalibrated
    detector = diffad.load_detector(padim_dir, "cpu")
    assert detector(np.asarray(PIL.Image.open(image).convert("RGB"))[None]).anomaly_maps.shape == (1, 20, 24)
    with pytest.raises(ConfigError, match="diffad.load_detector"):
        AnomalyDetectionPipeline.from_pretrained(padim_dir)


# --- items 5, 6: options, images and masks ----------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "nan", "-1", "inf"])
def test_detect_refuses_an_overlay_range_that_draws_nothing(model_dir, tmp_path, capsys, value):
    image = image_file(tmp_path / "a.png")
    argv = ["detect", "--model", str(model_dir), "--input", str(image), "--output_dir", str(tmp_path / "o")]
    assert main([*argv, "--overlay_max", value]) == 2
    one_line_error(capsys, "--overlay_max")


def test_evaluate_refuses_negative_cases(model_dir, data, tmp_path, capsys):
    argv = ["evaluate", "--model", str(model_dir), "--data", str(data), "--output_dir", str(tmp_path / "e")]
    assert main([*argv, "--cases", "-1"]) == 2
    one_line_error(capsys, "--cases")


def test_a_failed_evaluate_leaves_no_folder_behind(tmp_path, data, capsys):
    broken = tmp_path / "m_nounet"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "AnomalyDetectionPipeline"}))
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(broken), "--data", str(data), "--output_dir", str(out)]) == 2
    assert not out.exists()  # once: a folder holding only .diffad-evaluate


def test_a_pipeline_folder_missing_its_unet_says_so(model_dir, tmp_path, capsys):
    from diffad import AnomalyDetectionPipeline

    folder = tmp_path / "m_nounet"
    shutil.copytree(model_dir, folder)
    shutil.rmtree(folder / "unet")
    image = image_file(tmp_path / "a.png")
    assert (
        main(["detect", "--model", str(folder), "--input", str(image), "--output_dir", str(tmp_path / "o")])
        == 2
    )
    one_line_error(capsys, "unet/", "copy the whole folder")
    with pytest.raises(ConfigError, match="unet/"):
        AnomalyDetectionPipeline.from_pretrained(folder)


def test_every_broken_image_of_a_folder_is_named(model_dir, tmp_path, capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    image_file(folder / "good.png")
    for i in range(7):
        (folder / f"broken{i}.png").write_bytes(b"not a png")
    argv = ["detect", "--model", str(model_dir), "--input", str(folder), "--output_dir", str(tmp_path / "o")]
    assert main(argv) == 2
    err = one_line_error(capsys, "7 images cannot be read", "and 2 more")
    assert all(f"broken{i}.png" in err for i in range(5))


def test_nan_in_an_image_file_names_the_file(model_dir, tmp_path, capsys):
    from diffad.data.images import load_image

    path = tmp_path / "nan.tif"
    PIL.Image.fromarray(np.full((16, 16), np.nan, dtype=np.float32), mode="F").save(path)
    with pytest.raises(DataError, match="nan.tif"):
        load_image(path)
    argv = ["detect", "--model", str(model_dir), "--input", str(path), "--output_dir", str(tmp_path / "o")]
    assert main(argv) == 2
    one_line_error(capsys, "nan.tif", "NaN")


def test_tiny_and_strip_images_and_empty_masks_are_warned_about(model_dir, tmp_path, capsys):
    from diffad.data.images import check_images

    tiny, strip, fine = (
        image_file(tmp_path / n, s)
        for n, s in (("t.png", (1, 1)), ("s.png", (2000, 10)), ("f.png", (30, 20)))
    )
    warnings = check_images([tiny, strip, fine])
    assert len(warnings) == 2 and "1x1" in warnings[0] and "2000x10" in warnings[1]
    argv = [
        "detect",
        "--model",
        str(model_dir),
        "--input",
        str(tiny),
        str(strip),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 0
    assert "2 images of sizes that detect poorly" in capsys.readouterr().err


def test_an_all_zero_defect_mask_is_warned_about_in_summary_and_evaluate(model_dir, tmp_path, capsys):
    root = make_mvtec_tree(tmp_path / "d", "widget", size=32, n_train=4, n_good_test=2, n_defect=2)
    mask = sorted((root / "ground_truth").rglob("*.png"))[0]
    PIL.Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(mask)
    assert main(["data", "summary", str(root)]) == 0
    assert "1 defect mask with no defective pixel" in capsys.readouterr().err
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(root), "--output_dir", str(out)]) == 0
    assert f"with no defective pixel at 16 px (widget): {mask}" in capsys.readouterr().out


# --- item 4: a synthetic test set never holds a training image --------------------------------------


def test_synthesize_refuses_test_fraction_0(data, tmp_path, capsys):
    argv = [
        "synthesize",
        "--input",
        str(data / "train" / "good"),
        "--output_dir",
        str(tmp_path / "s"),
    ]
    assert main([*argv, "--num", "1", "--test_fraction", "0"]) == 2
    one_line_error(capsys, "--test_fraction", "held-back")
    assert not (tmp_path / "s").exists()


# --- item 8: help and naming ---------------------------------------------------------------------


def subcommands():
    import argparse

    from diffad.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, parser in action.choices.items():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for sub in nested:
            found.update({f"{name} {n}": p for n, p in sub.choices.items()})
        if not nested:
            found[name] = parser
    return found


def test_every_option_of_every_command_has_help():
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, parser in subcommands().items()
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert not missing, missing


def test_synthesize_help_says_each_default_once_and_no_none():
    text = subcommands()["synthesize"].format_help()
    assert "(default: None)" not in text
    for block in re.split(r"\n  (?=-)", text):  # one option's help each
        assert block.count("default") <= 1, block


def test_overwrite_is_one_name_everywhere_and_fit_keeps_the_old_one():
    parsers = subcommands()
    for name in ("fit", "detect", "evaluate", "synthesize", "demo"):
        assert "--overwrite" in parsers[name]._option_string_actions, name
    old = parsers["fit"]._option_string_actions["--overwrite_output_dir"]
    assert old is parsers["fit"]._option_string_actions["--overwrite"]


# --- item 7: what the README says the score is and where detect writes -----------------------------


def test_score_is_the_maps_maximum_at_the_working_resolution():
    pipe = tiny_pipeline(None, channels=1)
    size = pipe.resolution
    images = [torch.rand(1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1]
    images.append(torch.rand(1, 3 * size, 2 * size, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    out = pipe(images, generator=torch.Generator().manual_seed(0))
    assert out.anomaly_scores[0] == pytest.approx(float(out.anomaly_maps[0].max()), abs=1e-6)
    assert out.anomaly_maps[1].shape == (3 * size, 2 * size)  # resized after scoring


def test_detect_writes_a_folders_images_under_its_name(model_dir, tmp_path):
    (tmp_path / "my_images" / "a").mkdir(parents=True)
    image_file(tmp_path / "my_images" / "a" / "b.png")
    single = image_file(tmp_path / "c.png")
    out = tmp_path / "detections"
    argv = ["detect", "--model", str(model_dir), "--input", str(tmp_path / "my_images"), str(single)]
    assert main([*argv, "--output_dir", str(out)]) == 0
    assert (out / "maps" / "my_images" / "a" / "b.png").is_file() and (out / "maps" / "c.png").is_file()


def test_fit_names_every_broken_training_image(tmp_path, capsys):
    root = make_mvtec_tree(tmp_path / "d", "widget", size=16, n_train=4, n_good_test=1, n_defect=1)
    for i in range(2):
        (root / "train" / "good" / f"broken{i}.png").write_bytes(b"not a png")
    argv = ["fit", "--data", str(root), "--output_dir", str(tmp_path / "f"), "--preset", "tiny"]
    assert main([*argv, "--resolution", "16", "--vae_steps", "1", "--unet_steps", "1"]) == 2
    one_line_error(capsys, "2 images cannot be read", "broken0.png", "broken1.png")
