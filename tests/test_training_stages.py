"""The stages in-process, tiny: what they write, the time budget, `diffad fit`, and every bad input."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_trees import make_mvtec_tree

from diffad.errors import ConfigError, DataError, OutputExistsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("data"), size=32, n_train=6, n_defect=2)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffad.models import build_autoencoder

    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    build_autoencoder("tiny", "kl").save_pretrained(folder)
    return folder


def run(module_name, argv):
    import importlib

    from diffad.training.accelerate_setup import reset_accelerate_state

    module = importlib.import_module(f"diffad.training.{module_name}")
    try:
        return module.main(module.parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate_state()


def tiny(data, out, *extra):
    # argparse keeps the last of a repeated option: `extra` may override these
    return ["--data", data, "--output_dir", out, "--preset", "tiny", "--resolution", 16,
            "--train_batch_size", 2, "--checkpointing_steps", 0, "--validation_steps", 0, *extra]  # fmt: skip


def test_unet_stage_writes_a_pipeline_that_loads_and_detects(data, vae_dir, tmp_path):
    from diffusers import AutoencoderKL

    from diffad import AnomalyDetectionPipeline
    from diffad.data import AnomalyDataset, load_samples

    out = tmp_path / "pipe"
    run("unet_stage", tiny(data, out, "--vae", vae_dir, "--max_train_steps", 2, "--validation_steps", 2))
    assert sorted(p.name for p in out.iterdir()) == [
        "model_index.json", "samples", "scheduler", "scorer", "training_args.json", "unet", "vae",
    ]  # fmt: skip
    assert (out / "samples" / "step-000002.png").is_file()

    # LDM's scale: 1 / std of the posterior means of the training images, stored in the vae config.
    vae = AutoencoderKL.from_pretrained(vae_dir)
    train = [s for s in load_samples(data, split="train") if s.label == 0]
    images = torch.stack([item["image"] for item in AnomalyDataset(train, 16)])
    with torch.no_grad():
        expected = 1.0 / float(vae.encode(images).latent_dist.mean.std())
    assert json.loads((out / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(
        expected, rel=1e-5
    )

    pipe = AnomalyDetectionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    result = pipe(images[:2], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert result.anomaly_maps.shape == (2, 16, 16) and result.anomaly_scores.shape == (2,)
    assert pipe.scheduler.config.num_train_timesteps == 1000 and not pipe.scheduler.config.clip_sample


def test_time_budget_stops_every_stage_with_a_checkpoint_and_a_final_model(data, tmp_path):
    out = tmp_path / "pixels"
    argv = tiny(
        data, out, "--pixel_space", "--noise", "gaussian", "--max_train_steps", 500, "--max_minutes", 1e-5
    )
    summary = run("unet_stage", argv)
    assert summary["stopped_for_time"] and summary["steps"] < 500
    assert (out / f"checkpoint-{summary['steps']}" / "state.json").is_file()
    assert (out / "model_index.json").is_file()
    # ... and the run continues from there with a larger budget
    summary = run(
        "unet_stage",
        argv[:-2] + ["--max_train_steps", summary["steps"] + 1, "--resume_from_checkpoint", "latest"],
    )
    assert summary["start_step"] == summary["steps"] - 1 and not summary["stopped_for_time"]


def test_accumulation_steps_both_optimizers_once_per_step(data, tmp_path):
    # autoencoder and discriminator share one accumulate(): each steps once per optimizer step
    out = tmp_path / "gan"
    run("vae_stage", tiny(data, out, "--max_train_steps", 3, "--gradient_accumulation_steps", 2,
                          "--disc_start", 1, "--checkpointing_steps", 3))  # fmt: skip
    adam_steps = [
        torch.load(out / "checkpoint-3" / name, weights_only=True)["state"][0]["step"].item()
        for name in ("optimizer.bin", "optimizer_1.bin")
    ]
    assert adam_steps == [3, 2]  # the discriminator from step 1 on


def test_cropped_autoencoder_training_sees_whole_images_every_nth_batch(data, tmp_path, monkeypatch):
    import diffad.training.vae_stage as vae_stage

    sizes = []
    real_step = vae_stage.Autoencoding.forward
    monkeypatch.setattr(
        vae_stage.Autoencoding,
        "forward",
        lambda self, x, eps=None: sizes.append(x.shape[-1]) or real_step(self, x, eps),
    )
    run(
        "vae_stage",
        tiny(data, tmp_path / "a", "--crop_size", 8, "--full_image_every", 3, "--max_train_steps", 6),
    )
    assert sizes == [8, 8, 16, 8, 8, 16]
    sizes.clear()
    run(
        "vae_stage",
        tiny(data, tmp_path / "b", "--crop_size", 8, "--full_image_every", 0, "--max_train_steps", 3),
    )
    assert sizes == [8, 8, 8]
    with pytest.raises(ConfigError, match="--full_image_every"):
        run("vae_stage", tiny(data, tmp_path / "c", "--crop_size", 8, "--full_image_every", -1))
    assert not (tmp_path / "c").exists()


def test_vq_autoencoder_trains_and_saves(data, tmp_path):
    from diffusers import VQModel

    summary = run("vae_stage", tiny(data, tmp_path / "vq", "--model_type", "vq", "--max_train_steps", 2))
    assert summary["steps"] == 2 and summary["reg_loss"] > 0
    VQModel.from_pretrained(tmp_path / "vq")


def test_diffad_fit_runs_both_stages_then_refuses_or_resumes(data, tmp_path, capsys):
    from diffad.cli import main

    out = tmp_path / "fit"
    argv = ["fit", "--data", data, "--output_dir", out, "--first_stage", "kl", "--preset", "tiny", "--resolution", 16,
            "--vae_steps", 2, "--unet_steps", 2, "--validation_steps", 0, "--num_inference_steps", 2, "--feature_head_steps", 5]  # fmt: skip
    argv = [str(a) for a in argv]
    for bad in (
        ["--num_inference_steps", "0"],
        ["--feature_dim", "-1"],
        ["--select_images", "-2"],
        ["--feature_head_steps", "-1"],
        ["--vae_steps", "0"],  # once fell back silently to 3000 steps
        ["--unet_steps", "-1"],
        ["--resolution", "4"],  # the floor of detect, evaluate and synthesize
        ["--max_minutes", "nan"],
    ):
        assert main(argv + bad) == 2 and bad[0] in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert (
        "plan: stage 1 (autoencoder): 2 steps, no time limit; stage 2 (UNet): 2 steps, no time limit; calibration"
        in printed.out
    )
    assert (out / "model_index.json").is_file() and (out / "autoencoder" / "config.json").is_file()
    summary = json.loads((out / "fit_summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["vae", "unet", "calibration"]
    assert [s.get("steps") for s in summary["stages"]] == [2, 2, None]
    scorer = json.loads((out / "scorer" / "config.json").read_text())
    assert scorer["calibration"] == "global" and scorer["resolution"] == 16
    assert scorer["num_inference_steps"] == 2
    if scorer["feature_gaussian_channels"]:  # features installed: the head was trained with them
        assert scorer["feature_head_channels"] == scorer["feature_gaussian_channels"]
        assert "feature head: training" in printed.err  # the calibration shows its bars
    if (out / "selection.json").is_file():  # enough good images were left to choose on
        chosen = json.loads((out / "selection.json").read_text())["chosen"]
        assert all(scorer[f"{k}_weight"] == v for k, v in chosen["weights"].items())

    assert main(argv) == 2  # the folder holds a fit now
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert "stage 1 already done" in capsys.readouterr().out


def test_fit_plan_keeps_a_time_budget_for_a_stage_given_no_steps(data, tmp_path):
    from diffad.training import fit

    def plan(*extra):
        args = fit.add_fit_args(argparse.ArgumentParser()).parse_args(
            ["--data", str(data), "--output_dir", str(tmp_path / "p"), *extra]
        )
        return fit.stage_plan(args)

    # Steps for stage 1 only: stage 2 once lost the time budget and ran 6000 steps (hours).
    vae, unet = plan("--vae_steps", "2").values()
    assert (vae["steps"], vae["minutes"]) == (2, None)
    assert unet["steps"] == fit.DEFAULT_UNET_STEPS
    assert unet["minutes"] == pytest.approx(fit.DEFAULT_MINUTES * fit.MARGIN * (1 - fit.VAE_SHARE))
    vae, unet = plan("--unet_steps", "3").values()
    assert vae["minutes"] == pytest.approx(fit.DEFAULT_MINUTES * fit.MARGIN * fit.VAE_SHARE)
    assert unet["minutes"] is None
    # A budget given applies to every stage, steps or not; no settings at all: the default budget.
    for extra, minutes in ((("--vae_steps", "2", "--max_minutes", "10"), 10.0), ((), fit.DEFAULT_MINUTES)):
        vae, unet = plan(*extra).values()
        assert vae["shared"] and unet["minutes"] == pytest.approx(minutes * fit.MARGIN)
    text = fit.describe_plan(plan("--vae_steps", "2"))
    assert "2 steps, no time limit" in text and "13.5 minutes" in text


def test_fit_method_padim_writes_the_reference_detector(data, tmp_path):
    from diffad.cli import main

    out = tmp_path / "padim"
    assert (
        main(
            ["fit", "--method", "padim", "--data", str(data), "--output_dir", str(out), "--resolution", "32"]
        )
        == 0
    )
    assert (out / "detector_config.json").is_file()


def test_fit_with_head_says_when_the_head_stage_is_missing(data, tmp_path, monkeypatch):
    from diffad.training import fit

    monkeypatch.setattr(fit.importlib.util, "find_spec", lambda name: None)
    args = fit.add_fit_args(argparse.ArgumentParser()).parse_args(
        ["--data", str(data), "--output_dir", str(tmp_path / "h"), "--with_head"]
    )
    with pytest.raises(ConfigError, match="not available yet"):
        fit.run_fit(args)
    assert not (tmp_path / "h").exists()


# --- bad input -----------------------------------------------------------------------------------


def test_output_dir_with_other_files_is_refused(data, tmp_path):
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    with pytest.raises(OutputExistsError, match=r"report\.pdf.*--overwrite_output_dir"):
        run("vae_stage", tiny(data, tmp_path, "--max_train_steps", 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]  # nothing written


def test_vae_path_without_an_autoencoder_is_refused(data, tmp_path):
    from diffad.models import build_unet

    build_unet("tiny", 4, 8).save_pretrained(tmp_path / "not_a_vae")
    with pytest.raises(ConfigError, match="holds no autoencoder"):
        run(
            "unet_stage",
            tiny(data, tmp_path / "out", "--vae", tmp_path / "not_a_vae", "--max_train_steps", 1),
        )
    with pytest.raises(ConfigError, match="holds no autoencoder"):
        run(
            "unet_stage", tiny(data, tmp_path / "out2", "--vae", tmp_path / "missing", "--max_train_steps", 1)
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()  # refused before writing


def test_resolution_the_downsampling_does_not_divide_is_refused(data, vae_dir, tmp_path):
    with pytest.raises(ConfigError, match="--resolution 18 is not divisible by 4.*16 or 20"):
        run("vae_stage", tiny(data, tmp_path / "a", "--resolution", 18, "--max_train_steps", 1))
    # f=4 autoencoder x the tiny UNet's one halving: 8 must divide the resolution
    with pytest.raises(ConfigError, match="--resolution 20 is not divisible by 8"):
        run(
            "unet_stage",
            tiny(data, tmp_path / "b", "--vae", vae_dir, "--resolution", 20, "--max_train_steps", 1),
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_empty_training_set_is_refused(tmp_path):
    empty = make_mvtec_tree(tmp_path / "data", n_train=0, n_good_test=2, n_defect=1)
    with pytest.raises(DataError, match="train"):
        run("vae_stage", tiny(empty, tmp_path / "out", "--max_train_steps", 1))
    assert not (tmp_path / "out").exists()


def test_the_scripts_print_the_error_and_exit_2(data, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    cmd = [
        sys.executable,
        str(ROOT / "train_vae.py"),
        *map(str, tiny(data, tmp_path, "--max_train_steps", 1)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train_vae.py: error: --output_dir" in proc.stderr and "Traceback" not in proc.stderr
