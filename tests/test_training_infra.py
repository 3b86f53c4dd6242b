"""The training plumbing on its own: data order, per-step draws, output folder, checkpoints, EMA, panels."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from diffad.errors import ConfigError, OutputExistsError
from diffad.training.checkpoints import (
    check_output_dir,
    list_checkpoints,
    prepare_output_dir,
    resolve_resume,
    save_checkpoint,
    write_final_atomic,
)
from diffad.training.ema import ema_weights, load_ema, make_ema, save_ema
from diffad.training.order import (
    BatchOrder,
    generator_for,
    global_randint,
    global_randn,
    random_crops,
    random_hflip,
)
from diffad.training.panels import error_rows, save_panel


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    from diffad.training.accelerate_setup import reset_accelerate_state

    acc = Accelerator(cpu=True)
    yield acc
    reset_accelerate_state()


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )


# --- data order and draws ------------------------------------------------------------------------


def test_each_epoch_is_a_permutation_and_batches_cross_epochs():
    order = BatchOrder(5, 2, seed=3)
    stream = [i for m in range(5) for i in order.indices(m)]  # 10 positions = 2 epochs
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:]) == list(range(5))
    assert stream[:5] != stream[5:] or stream[:5] != list(range(5))  # epochs are reshuffled
    again = BatchOrder(5, 2, seed=3)
    assert [again.indices(m) for m in (4, 0, 2)] == [
        order.indices(m) for m in (4, 0, 2)
    ]  # any order of asking


def test_ranks_split_the_global_batch_of_one_process():
    single = BatchOrder(7, 4, seed=1)
    ranks = [BatchOrder(7, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for m in range(6):
        assert ranks[0].indices(m) + ranks[1].indices(m) == single.indices(m)


def test_global_draws_are_the_same_for_any_world_size():
    full = global_randn((4, 2, 3), generator_for(0, "noise", 5))
    halves = [global_randn((2, 2, 3), generator_for(0, "noise", 5), rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat(halves), full)
    t = global_randint(1000, 4, generator_for(0, "t", 5))
    t2 = [global_randint(1000, 2, generator_for(0, "t", 5), rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat(t2), t)
    assert not torch.equal(global_randn((4, 2, 3), generator_for(0, "noise", 6)), full)


def test_random_flip_mirrors_some_images_and_keeps_the_others():
    images = torch.arange(64.0).view(16, 1, 1, 4)
    out = random_hflip(images, generator_for(0, "flip", 0))
    flipped = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, images)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 16


def test_random_crops_are_windows_of_the_image_and_the_same_for_any_world_size():
    images = torch.arange(6 * 10 * 12, dtype=torch.float32).view(6, 1, 10, 12)
    crops = random_crops(images, 4, generator_for(1, "crop", 0))
    corners = set()
    for crop, image in zip(crops, images):
        y, x = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 12)
        assert torch.equal(crop, image[:, y : y + 4, x : x + 4]) and y <= 6 and x <= 8
        corners.add((y, x))
    assert len(corners) > 1
    halves = [
        random_crops(images[r * 3 : r * 3 + 3], 4, generator_for(1, "crop", 0), rank=r, world_size=2)
        for r in range(2)
    ]
    assert torch.equal(torch.cat(halves), crops)


# --- the output folder ---------------------------------------------------------------------------


def test_output_dir_with_other_files_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt.*--overwrite_output_dir"):
        check_output_dir(tmp_path, overwrite=False, resume=None, model_entries=["config.json"])
    with pytest.raises(OutputExistsError):  # resuming does not excuse files a run did not write
        check_output_dir(tmp_path, overwrite=False, resume="latest", model_entries=["config.json"])
    check_output_dir(tmp_path, overwrite=True, resume=None, model_entries=["config.json"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_previous_run_is_resumed_not_silently_restarted(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "samples").mkdir()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="--resume_from_checkpoint latest"):
        check_output_dir(tmp_path, overwrite=False, resume=None, model_entries=["config.json"])
    check_output_dir(tmp_path, overwrite=False, resume="latest", model_entries=["config.json"])
    prepare_output_dir(tmp_path, overwrite=True)  # overwriting drops the old run's checkpoints
    assert not (tmp_path / "checkpoint-4").exists() and (tmp_path / "config.json").exists()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_dir(tmp_path / "f", overwrite=True, resume=None, model_entries=[])


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoints_are_complete_pruned_and_resumable(tmp_path, accelerator):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    for step in (2, 4, 6):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        save_checkpoint(accelerator, tmp_path, step, total_limit=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert resolve_resume("latest", tmp_path).name == "checkpoint-6"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    accelerator.load_state(str(tmp_path / "checkpoint-6"))
    assert torch.equal(model.weight, saved)


def test_a_crash_while_writing_a_checkpoint_leaves_only_the_temporary_folder(tmp_path, accelerator):
    accelerator.prepare(torch.nn.Linear(3, 2))
    save_checkpoint(accelerator, tmp_path, 2, total_limit=None)

    def crash(folder):
        (folder / "half-written").write_bytes(b"\0" * 10)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(accelerator, tmp_path, 4, total_limit=None, extra=crash)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".checkpoint-4.tmp", "checkpoint-2"]
    assert resolve_resume("latest", tmp_path).name == "checkpoint-2"  # the temp folder is never taken
    save_checkpoint(accelerator, tmp_path, 4, total_limit=None)  # the next save replaces the debris
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_resume_path_must_be_a_complete_checkpoint(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-3"), tmp_path)
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)
    assert resolve_resume("latest", tmp_path) is None  # no complete checkpoint: a fresh start


def test_a_crash_while_writing_the_final_model_leaves_no_loadable_folder(tmp_path):
    model = tiny_unet()

    def crash(folder):
        model.save_pretrained(folder)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_final_atomic(tmp_path, crash, marker="config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".final.tmp"]
    with pytest.raises(EnvironmentError):
        UNet2DModel.from_pretrained(tmp_path)

    write_final_atomic(tmp_path, model.save_pretrained, marker="config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    loaded = UNet2DModel.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


# --- EMA -----------------------------------------------------------------------------------------


def test_ema_round_trips_through_a_checkpoint_and_swaps_in_for_saving(tmp_path):
    model = tiny_unet()
    ema = make_ema(model, decay=0.9)
    first = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.step(model.parameters())
    # diffusers' EMA warm-up: decay_k = min(0.9, (1 + k) / (10 + k)) for step k >= 1, 0 for the first
    expected = [f.clone() for f in first]
    for k, shift in ((0, 1.0), (1, 2.0), (2, 3.0)):
        d = 0.0 if k == 0 else min(0.9, (1 + k) / (10 + k))
        expected = [d * e + (1 - d) * (f + shift) for e, f in zip(expected, first)]
    assert all(torch.allclose(s, e, atol=1e-5) for s, e in zip(ema.shadow_params, expected))

    save_ema(ema, tmp_path)
    other = make_ema(tiny_unet(), decay=0.9)
    load_ema(other, tmp_path, torch.device("cpu"))
    assert other.optimization_step == 3
    assert all(torch.equal(a, b) for a, b in zip(other.shadow_params, ema.shadow_params))

    live = [p.detach().clone() for p in model.parameters()]
    with ema_weights(model, ema):
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), ema.shadow_params))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), live))


def test_resuming_an_ema_run_without_ema_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no EMA weights"):
        load_ema(make_ema(tiny_unet(), 0.9), tmp_path, torch.device("cpu"))


# --- panels --------------------------------------------------------------------------------------


def test_panel_rows_show_input_reconstruction_and_difference(tmp_path):
    inputs = torch.full((3, 1, 32, 32), -1.0)
    outputs = inputs.clone()
    outputs[:, :, :16] = 1.0  # the top half is wrong
    path = save_panel(error_rows(inputs, outputs), tmp_path / "samples" / "step-000001.png")
    img = np.asarray(Image.open(path))
    assert img.shape == (3 * (96 + 2), 96 + 3 * (96 + 2), 3)
    diff_tile = img[2 * 98 : 2 * 98 + 96, 96 : 96 + 96, 0]
    assert diff_tile[:48].min() == 255 and diff_tile[48:].max() == 0
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_training_args_are_recorded_as_json(tmp_path):
    from diffad.training.checkpoints import write_json_atomic

    write_json_atomic(tmp_path / "a.json", {"x": 1, "p": tmp_path})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1, "p": str(tmp_path)}
