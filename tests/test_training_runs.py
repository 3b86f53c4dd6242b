"""Whole training runs, tiny: killed and resumed, two processes against one, the pipeline they write."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from data_trees import make_mvtec_tree
from safetensors.torch import load_file
from test_training_stages import run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("data"), size=32, n_train=6, n_defect=2)


def vae_command(data, out, *extra):
    return [
        sys.executable,
        str(ROOT / "train_vae.py"),
        "--data", str(data),
        "--preset", "tiny",
        "--resolution", "16",
        "--output_dir", str(out),
        "--train_batch_size", "2",
        "--validation_steps", "0",
        "--seed", "3",
        *extra,
    ]  # fmt: skip


def weights(folder):
    return load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors"))


def test_sigkill_after_a_checkpoint_then_resume_gives_the_uninterrupted_weights(data, tmp_path):
    # EMA, accumulation, flips and the discriminator (from step 6) all have to come back exactly.
    extra = ["--max_train_steps", "16", "--checkpointing_steps", "4", "--checkpoints_total_limit", "2",
             "--use_ema", "--gradient_accumulation_steps", "2", "--random_flip", "--disc_start", "6"]  # fmt: skip
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    victim = subprocess.Popen(vae_command(data, broken, *extra), env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (broken / "checkpoint-4").is_dir() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (broken / "config.json").exists()  # no final model from a killed run
    run("vae_stage", vae_command(data, whole, *extra)[2:])

    args = vae_command(data, broken, *extra, "--resume_from_checkpoint", "latest")[2:]
    summary = run("vae_stage", args)
    assert summary["start_step"] in (4, 8, 12) and summary["steps"] == 16  # continued, not restarted
    a, b = weights(whole), weights(broken)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ddp_launch() -> list[str]:
    """`accelerate launch` of two gloo processes on this machine, on a free port."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "configs/accelerate/cpu_ddp.yaml"),
        "--main_process_port", str(free_port()),
    ]  # fmt: skip


def test_two_cpu_processes_train_like_one_with_the_same_global_batch(data, tmp_path):
    from diffad.models import build_autoencoder
    from diffad.training.accelerate_setup import seeded

    common = ["--max_train_steps", "4", "--checkpointing_steps", "0", "--learning_rate", "1e-3"]
    two = subprocess.Popen(
        cpu_ddp_launch() + vae_command(data, tmp_path / "two", *common, "--train_batch_size", "2")[1:],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    one_args = vae_command(data, tmp_path / "one", *common, "--train_batch_size", "4")[2:]
    run("vae_stage", one_args)
    _, stderr = two.communicate(timeout=240)
    assert two.returncode == 0, stderr[-3000:]
    assert "process 0/2" in stderr and "process 1/2" in stderr  # both ranks ran

    with seeded(3):
        init = build_autoencoder("tiny", "kl").state_dict()
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    moved = sum(((a[k] - init[k]) ** 2).sum() for k in a).sqrt()
    apart = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt()
    assert moved > 1e-2  # training changed the weights ...
    assert apart < 1e-2 * moved, (apart, moved)  # ... and both runs the same way, up to float sums
