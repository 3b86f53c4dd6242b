"""`diffad synthesize`: MVTec layout that the readers accept, same seed same bytes, resume, refuse."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffad.cli import main
from diffad.data import load_samples
from diffad.errors import OutputExistsError
from diffad.synthesis.dataset_writer import MANIFEST, WORK_DIR, Settings, synthesize_dataset


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(40, 215, (32, 32), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make(good_dir, out, **kw):
    settings = Settings(
        input=str(good_dir),
        method=kw.pop("method", "mix"),
        num=kw.pop("num", 5),
        seed=kw.pop("seed", 1),
        test_fraction=0.34,
        **kw,
    )
    return synthesize_dataset(settings, out, progress=False)


def test_written_dataset_reads_back_with_the_right_counts(good_dir, tmp_path):
    manifest = make(good_dir, tmp_path / "out")
    samples = load_samples(str(tmp_path / "out"))
    kinds = Counter((s.split, s.label) for s in samples)
    assert kinds == {("train", 0): 4, ("test", 0): 2, ("test", 1): 5}
    assert all(s.mask_path is not None for s in samples if s.label == 1)
    assert manifest["status"] == "complete" and len(manifest["files"]) == 11
    # Train and test images are different source images; defects come from the test ones.
    train_sources = {f["source"] for f in manifest["files"] if f["split"] == "train"}
    test_sources = {f["source"] for f in manifest["files"] if f["split"] == "test"}
    assert not train_sources & test_sources and len(train_sources | test_sources) == 6
    for entry in manifest["files"]:
        if entry["label"] != 1:
            continue
        defect = np.asarray(Image.open(tmp_path / "out" / entry["file"]))
        mask = np.asarray(Image.open(tmp_path / "out" / entry["mask"]))
        source = np.asarray(Image.open(good_dir / entry["source"]))
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
        assert np.array_equal(defect[mask == 0], source[mask == 0]), "pixels outside the mask changed"
        assert entry["params"]["method"] == entry["method"] and entry["file"].startswith(
            f"test/{entry['method']}/"
        )
    assert not (tmp_path / "out" / WORK_DIR).exists()


def test_same_seed_same_bytes_and_other_seed_other_defects(good_dir, tmp_path):
    make(good_dir, tmp_path / "a", method="draem", resolution=24)
    make(good_dir, tmp_path / "b", method="draem", resolution=24)
    make(good_dir, tmp_path / "c", method="draem", resolution=24, seed=2)
    a, b, c = files_of(tmp_path / "a"), files_of(tmp_path / "b"), files_of(tmp_path / "c")
    assert a == b
    assert Image.open(tmp_path / "a" / "test" / "draem" / "0000.png").size == (24, 24)
    defects = [k for k in a if k.startswith("test/draem/")]
    assert any(a[k] != c.get(k) for k in defects)


def test_resume_after_an_interruption_gives_the_same_bytes(good_dir, tmp_path):
    make(good_dir, tmp_path / "whole", num=8)
    reference = files_of(tmp_path / "whole")
    out = tmp_path / "cut"
    make(good_dir, out, num=8)
    # Put the folder back as a killed run leaves it: manifest still "incomplete", records of the first
    # three defects only, later files missing, a half-written temporary file and a missing train image.
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(
        json.dumps({k: manifest[k] for k in ("tool", "version", "settings")} | {"status": "incomplete"})
    )
    (out / WORK_DIR).mkdir()
    for entry in manifest["files"]:
        if entry["label"] == 1:
            index = int(Path(entry["file"]).stem)
            if index < 3:
                (out / WORK_DIR / f"{index:04d}.json").write_text(
                    json.dumps(entry["params"], indent=2, sort_keys=True) + "\n"
                )
            else:
                (out / entry["file"]).unlink()
                if index > 5:
                    (out / entry["mask"]).unlink()
    (out / "train" / "good" / "0003.png").unlink()
    (out / "test" / "good" / ".0001.png.tmp-4242").write_bytes(b"\x89PNG half")
    make(good_dir, out, num=8)
    assert files_of(out) == reference


@pytest.mark.slow
def test_kill_and_rerun_the_command(good_dir, tmp_path):
    out = tmp_path / "killed"
    args = [
        "--input",
        str(good_dir),
        "--output_dir",
        str(out),
        "--num",
        "150",
        "--method",
        "mix",
        "--seed",
        "4",
        "--quiet",
    ]
    command = [sys.executable, "-m", "diffad.cli", "synthesize", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        records = out / WORK_DIR
        if records.is_dir() and len(list(records.iterdir())) >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    killed_early = proc.returncode == -signal.SIGKILL
    if killed_early:
        assert json.loads((out / MANIFEST).read_text())["status"] == "incomplete"
    assert main(["synthesize", *args]) == 0
    main(["synthesize", *args[:2], "--output_dir", str(tmp_path / "whole"), *args[4:]])
    assert files_of(out) == files_of(tmp_path / "whole")
    assert killed_early, "the run finished before it could be killed; the rerun was not exercised"


def test_refuses_a_folder_it_did_not_make(good_dir, tmp_path, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["synthesize", "--input", str(good_dir), "--output_dir", str(out), "--num", "2", "--quiet"]
    assert main(args) == 2
    assert "not made by" in capsys.readouterr().err and not (out / MANIFEST).exists()
    assert main([*args, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    assert len(list((out / "train" / "good").iterdir())) == 5  # 1 of 6 held back (test_fraction 0.2)
    # Its own folder, but asked for something else: refuse rather than mix two datasets.
    with pytest.raises(OutputExistsError, match="other settings"):
        make(good_dir, out, num=3, method="scratch")


def test_a_complete_dataset_is_left_alone(good_dir, tmp_path):
    make(good_dir, tmp_path / "done", num=2, method="cutpaste")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*")}
    make(good_dir, tmp_path / "done", num=2, method="cutpaste")
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*")}


def test_command_line_lists_every_method():
    from diffad.synthesis.cli import METHODS
    from diffad.synthesis.methods import METHOD_CHOICES

    assert tuple(METHODS) == tuple(METHOD_CHOICES)


def test_diffusion_defects_from_a_saved_model_folder(good_dir, tmp_path):
    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    from diffad import AnomalySynthesisPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    AnomalySynthesisPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "model")
    manifest = make(
        good_dir,
        tmp_path / "out",
        method="diffusion",
        num=2,
        model=str(tmp_path / "model"),
        num_inference_steps=2,
        anomaly_strength=2.0,
    )
    defects = [f for f in manifest["files"] if f["label"] == 1]
    assert [f["file"] for f in defects] == ["test/diffusion/0000.png", "test/diffusion/0001.png"]
    assert all(
        f["params"]["anomaly_strength"] == 2.0 and f["params"]["num_inference_steps"] == 2 for f in defects
    )
    for f in defects:
        assert np.asarray(Image.open(tmp_path / "out" / f["mask"])).any()
