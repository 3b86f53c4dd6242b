"""The segmentation head, its losses and stage 3 (train_seg) with tiny components (32 px, CPU)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from data_trees import make_mvtec_tree
from sklearn.metrics import log_loss

from diffad.errors import ConfigError
from diffad.models.seg_losses import dice_loss, focal_loss, segmentation_loss
from diffad.models.segmentation import SegmentationHead, build_segmentation_head
from diffad.training import seg_stage

SIZE = 32


def tiny_pipeline():
    from diffusers import DDIMScheduler

    from diffad import AnomalyDetectionPipeline
    from diffad.models import build_autoencoder, build_unet
    from diffad.scoring.scorer import AnomalyScorer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = build_autoencoder("tiny", "kl", in_channels=1)
        unet = build_unet("tiny", in_channels=4, sample_size=SIZE // 4)
    pipe = AnomalyDetectionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        scheduler=DDIMScheduler(num_train_timesteps=100),
        scorer=AnomalyScorer(resolution=SIZE, num_inference_steps=2, noise="gaussian", smoothing_sigma=1.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe")
    tiny_pipeline().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("data"), size=SIZE, n_train=6, channels=1)


def stage_args(tmp_path, model, data, *extra):
    return seg_stage.parse_args(
        [
            "--model", str(model), "--data", str(data), "--output_dir", str(tmp_path / "run"),
            "--preset", "tiny", "--methods", "draem", "smooth", "scratch", "--pool_size", "8",
            "--train_batch_size", "4", "--max_train_steps", "4", "--checkpointing_steps", "2",
            "--validation_steps", "2", "--num_validation_images", "2", "--recon_batch_size", "8",
            *extra,
        ]
    )  # fmt: skip


# ---- losses -----------------------------------------------------------------------------------------


def test_focal_loss_without_focusing_is_binary_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 1, 4, 4))
    target = (rng.uniform(size=logits.shape) < 0.3).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    expected = log_loss(target.ravel(), p.ravel(), labels=[0, 1])
    ours = focal_loss(torch.from_numpy(logits), torch.from_numpy(target), gamma=0.0)
    assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_by_hand():
    # p = sigmoid(0) = 0.5 on a positive: (1 - 0.5)^2 * ln 2; p = sigmoid(ln 3) = 0.75 on a negative:
    # (0.75)^2 * -ln(0.25); with alpha 0.25 the positive weighs 0.25 and the negative 0.75.
    logits = torch.tensor([0.0, math.log(3.0)])
    target = torch.tensor([1.0, 0.0])
    pos, neg = 0.25 * math.log(2.0), 0.5625 * math.log(4.0)
    assert focal_loss(logits, target).item() == pytest.approx((pos + neg) / 2, rel=1e-6)
    assert focal_loss(logits, target, alpha=0.25).item() == pytest.approx(
        (0.25 * pos + 0.75 * neg) / 2, rel=1e-6
    )


def test_dice_loss_by_hand_over_the_whole_batch():
    # probabilities 0.5 and 0.75 on targets 1 and 0: 1 - (2*0.5 + 1) / (1.25 + 1 + 1)
    logits = torch.tensor([[0.0], [math.log(3.0)]])
    target = torch.tensor([[1.0], [0.0]])
    assert dice_loss(logits, target).item() == pytest.approx(1 - 2.0 / 3.25, rel=1e-6)
    # all good and predicted good: no loss, though no image has a defect
    assert dice_loss(torch.full((2, 1, 4, 4), -30.0), torch.zeros(2, 1, 4, 4)).item() == pytest.approx(
        0, abs=1e-6
    )
    parts = segmentation_loss(logits, target, focal_weight=2.0, dice_weight=0.5)
    assert parts["loss"].item() == pytest.approx(2 * parts["focal"].item() + 0.5 * parts["dice"].item())


# ---- the head ---------------------------------------------------------------------------------------


def test_head_shapes_inputs_and_prior():
    head = build_segmentation_head("tiny", image_channels=3, residual_inputs=("pixel", "ssim"))
    assert head.in_channels == 3 * 2 + 2 and head.down[0][0].in_channels == 8
    x = torch.rand(2, 3, 19, 26) * 2 - 1
    logits = head(x, x.flip(-1))
    assert logits.shape == (2, 1, 19, 26)  # sizes not divisible by 2^levels come back as given
    # the output layer starts at zero weight: every pixel at the prior probability
    np.testing.assert_allclose(head.predict(x, x).numpy(), 0.05, rtol=1e-5)
    strided = build_segmentation_head("tiny", image_channels=3, input_stride=2)
    assert strided(x, x).shape == (2, 1, 19, 26)
    bare = SegmentationHead(image_channels=1, residual_inputs=(), block_out_channels=(4,), layers_per_block=1)
    assert bare.in_channels == 2
    with pytest.raises(ConfigError, match="residual input"):
        SegmentationHead(residual_inputs=("latent",))
    with pytest.raises(ConfigError, match="equal shape"):
        head(x, x[:, :1])
    with pytest.raises(ConfigError, match="preset"):
        build_segmentation_head("huge")


def test_head_residual_channels_are_the_scorers_residuals():
    from diffad.scoring.residuals import pixel_residual, ssim_residual

    head = build_segmentation_head("tiny", image_channels=1, residual_inputs=("pixel", "ssim"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    stacked = head.inputs(x, y)
    torch.testing.assert_close(stacked[:, 2], (x - y).abs()[:, 0])
    torch.testing.assert_close(stacked[:, 2], pixel_residual(x, y))
    torch.testing.assert_close(stacked[:, 3], ssim_residual(x, y))


def test_fused_map_adds_the_weighted_residual_map_to_the_logits():
    head = build_segmentation_head("tiny", image_channels=1, residual_weight=0.5)
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    residual = torch.rand(1, 16, 16)
    logits = head(x, -x)[:, 0]
    torch.testing.assert_close(head.anomaly_map(x, -x), logits)
    torch.testing.assert_close(head.anomaly_map(x, -x, residual), logits + 0.5 * residual)


def test_head_learns_synthetic_defects_and_its_loss_falls():
    from diffad.synthesis import draem_anomaly

    g = torch.Generator().manual_seed(0)
    good = torch.rand(8, 1, SIZE, SIZE, generator=g) * 0.4 - 0.2
    defect = draem_anomaly(good, torch.Generator().manual_seed(1), fill="noise")
    reconstruction = good  # a perfect reconstruction: the defect is the difference
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = build_segmentation_head("tiny", image_channels=1)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = segmentation_loss(head(defect.image, reconstruction), defect.mask)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    prob = head.predict(defect.image, reconstruction)
    assert prob[defect.mask > 0].mean() > prob[defect.mask == 0].mean() + 0.2


# ---- stage 3 -----------------------------------------------------------------------------------------


def test_train_seg_trains_saves_into_the_pipeline_and_maps_round_trip(tmp_path, pipeline_dir, data_dir):
    import shutil

    from diffad import AnomalyDetectionPipeline
    from diffad.training.accelerate_setup import reset_accelerate_state

    model = tmp_path / "model"
    shutil.copytree(pipeline_dir, model)
    scorer_config = model / "scorer" / "config.json"
    scorer_config.write_text(json.dumps({**json.loads(scorer_config.read_text()), "threshold_fpr": 1.0}))
    before = json.loads((model / "model_index.json").read_text())
    reset_accelerate_state()
    summary = seg_stage.main(stage_args(tmp_path, model, data_dir, "--use_ema", "--head_fusion", "0.5"))
    assert summary["steps"] == 4 and math.isfinite(summary["loss"])

    index = json.loads((model / "model_index.json").read_text())
    assert index["segmentation_head"] == ["diffad.models.segmentation", "SegmentationHead"]
    assert json.loads(scorer_config.read_text())["threshold_fpr"] is None  # set on the maps before the head
    ignored = {"segmentation_head", "_name_or_path"}  # diffusers records where a pipeline was loaded from
    assert {k: v for k, v in index.items() if k not in ignored} == {
        k: v for k, v in before.items() if k not in ignored
    }
    assert (
        not list(model.glob(".*tmp")) and (tmp_path / "run" / "segmentation_head" / "config.json").is_file()
    )
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "run" / "samples" / "step-000004.png").is_file()

    # A fresh interpreter reloads it too (diffusers loads components only from imported modules).
    code = "from diffad import AnomalyDetectionPipeline as P; import sys; print(type(P.from_pretrained(sys.argv[1]).segmentation_head).__name__)"
    fresh = subprocess.run(
        [sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True
    )
    assert fresh.stdout.strip() == "SegmentationHead"

    loaded = AnomalyDetectionPipeline.from_pretrained(str(model))
    head = loaded.segmentation_head
    assert isinstance(head, SegmentationHead) and head.config.residual_weight == 0.5
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    saved = SegmentationHead.from_pretrained(str(tmp_path / "run" / "segmentation_head"))
    torch.testing.assert_close(head.anomaly_map(x, -x), saved.anomaly_map(x, -x), rtol=0, atol=0)

    # Saved again and reloaded: the same maps, bit for bit.
    loaded.save_pretrained(str(tmp_path / "again"))
    again = AnomalyDetectionPipeline.from_pretrained(str(tmp_path / "again"))
    residual = torch.rand(2, SIZE, SIZE)
    torch.testing.assert_close(
        again.segmentation_head.anomaly_map(x, -x, residual),
        head.anomaly_map(x, -x, residual),
        rtol=0,
        atol=0,
    )

    # Without a head nothing changes: the other components detect exactly as before.
    original = AnomalyDetectionPipeline.from_pretrained(str(pipeline_dir))
    a = original(x, generator=torch.Generator().manual_seed(0))
    b = loaded(x, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(a.reconstructions, b.reconstructions)
    assert original.segmentation_head is None
    loaded.register_modules(segmentation_head=None)
    c = loaded(x, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(a.anomaly_maps, c.anomaly_maps)
    np.testing.assert_array_equal(a.anomaly_scores, c.anomaly_scores)

    # A second run refuses to replace the head unless told to.
    reset_accelerate_state()
    with pytest.raises(ConfigError, match="--overwrite_head"):
        seg_stage.main(stage_args(tmp_path, model, data_dir))


def test_pool_is_a_function_of_seed_and_round(pipeline_dir, data_dir, tmp_path):
    from diffad.training.data import good_training_samples, training_images

    args = stage_args(tmp_path, pipeline_dir, data_dir, "--good_fraction", "0.25")
    pipe = seg_stage.load_pipeline(pipeline_dir)
    images = training_images(good_training_samples(str(data_dir), None), SIZE, 1, show_progress=False).images
    first = seg_stage.DefectPool(pipe, images, args, show_progress=False)
    second = seg_stage.DefectPool(pipe, images, args, show_progress=False)
    a, b = first.get(1), second.get(1)
    for key in ("image", "reconstruction", "mask"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    defective = a["mask"].flatten(1).any(1)
    assert defective.any() and (~defective).any()
    assert set(first.methods) - {"good"} <= {"draem", "smooth", "scratch"}
    # Good samples are the training images themselves; defects differ only inside the mask.
    assert (a["image"] - images[:1]).abs().sum() >= 0
    outside = (a["mask"] == 0).expand_as(a["image"])
    assert a["reconstruction"].shape == a["image"].shape
    assert not torch.equal(first.get(2)["image"], a["image"])
    assert outside.any()


def test_bad_arguments_are_config_errors(tmp_path, pipeline_dir, data_dir):
    with pytest.raises(ConfigError, match="--methods"):
        seg_stage.check_seg_args(stage_args(tmp_path, pipeline_dir, data_dir, "--methods", "paint"))
    with pytest.raises(ConfigError, match="--good_fraction"):
        seg_stage.check_seg_args(stage_args(tmp_path, pipeline_dir, data_dir, "--good_fraction", "1"))
    with pytest.raises(ConfigError, match="model_index.json"):
        seg_stage.load_pipeline(tmp_path)
    with pytest.raises(ConfigError, match="--resolution 64 differs"):
        seg_stage.main(stage_args(tmp_path, pipeline_dir, data_dir, "--resolution", "64"))


def test_pipeline_map_with_a_head_is_the_heads_fused_map():
    from diffad.models.segmentation import build_segmentation_head

    pipe = tiny_pipeline()
    x = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    plain = pipe(x, generator=torch.Generator().manual_seed(0), output_type="pt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        head = build_segmentation_head("tiny", image_channels=1, residual_weight=0.5).eval()
    torch.nn.init.normal_(head.out.weight, std=0.5, generator=torch.Generator().manual_seed(2))
    pipe.register_modules(segmentation_head=head)
    fused = pipe(x, generator=torch.Generator().manual_seed(0), output_type="pt")

    # The same reconstructions; the map is the head's logits plus 0.5 x the residual map it replaces.
    torch.testing.assert_close(fused.reconstructions, plain.reconstructions, rtol=0, atol=0)
    expected = head(x, plain.reconstructions * 2 - 1)[:, 0] + 0.5 * plain.anomaly_maps
    torch.testing.assert_close(fused.anomaly_maps, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.anomaly_scores, expected.amax(dim=(-2, -1)), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fused.anomaly_maps, plain.anomaly_maps)
