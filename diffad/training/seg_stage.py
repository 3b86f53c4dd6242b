"""Stage 3: a segmentation head learns, from synthetic defects, which reconstruction differences matter.

Given a trained detection pipeline (`--model`, stages 1-2), each round of training builds a pool of
samples: --pool_size good training images (a fresh draw each round) each either stay good (mask
zero, with probability --good_fraction) or get a synthetic defect from one of --methods; each is then
reconstructed by the pipeline at its detection strength (jittered by --strength_jitter) and steps.
Reconstruction is the expensive part, so a pool is reused for --pool_epochs epochs before the next
round draws a new one. Every draw is a function of (seed, round, item), so a resumed run rebuilds
exactly the pool it left. The head (`diffad.models.segmentation`) trains on (image, reconstruction)
-> mask with focal + Dice loss and is saved into the pipeline folder as its `segmentation_head`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from diffad.errors import ConfigError
from diffad.training.accelerate_setup import make_lr_scheduler, seeded
from diffad.training.args import add_training_args
from diffad.training.data import good_training_samples, training_images
from diffad.training.ema import ema_weights, make_ema
from diffad.training.order import BatchOrder, derive_seed, generator_for
from diffad.training.panels import save_panel, to_uint8
from diffad.training.stage import make_optimizer, panel_path, resume_stage, start_stage, train_and_save

logger = get_logger("diffad.training")

HEAD_NAME = "segmentation_head"
DEFAULT_METHODS = ("draem", "smooth", "cutpaste", "scratch", "diffusion")


def add_seg_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("data and model")
    g.add_argument(
        "--model", required=True, help="trained detection pipeline folder (train_unet.py's output)"
    )
    g.add_argument("--data", required=True, help="dataset folder with good training images, or 'elpv'")
    g.add_argument("--category", default=None, help="category inside --data (needed when it holds several)")
    g.add_argument("--random_flip", action="store_true", help="flip training images left-right at random")
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    # The pipeline fixes both; accepted so the stages can share a command line, and checked.
    g.add_argument("--resolution", type=int, default=None, help="must match the pipeline's (default: it)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None, help="must match the pipeline's")
    g = parser.add_argument_group("segmentation head")
    g.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    g.add_argument(
        "--residual_inputs",
        nargs="*",
        default=["pixel"],
        help="residual maps the head also reads (pixel, ssim)",
    )
    g.add_argument(
        "--head_stride",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: the head reads half-size inputs, 4x cheaper (at 128 px, 1 thread: +7 %% of a tiny pipeline's "
        "detection time, +1.4 %% of a small one's; stride 1: +28 %% and +5 %%)",
    )
    g.add_argument(
        "--head_fusion",
        type=float,
        default=0.1,
        help="weight of the calibrated residual map added to the head's logits at detection (0: head alone). "
        "0.1 costs little where the head is good (DAGM pixel AUROC 0.870 -> 0.856) and rescues an undertrained "
        "one (ELPV image AUROC 0.515 -> 0.812)",
    )
    g.add_argument("--focal_weight", type=float, default=1.0)
    g.add_argument("--dice_weight", type=float, default=1.0)
    g.add_argument("--overwrite_head", action="store_true", help="replace a head the pipeline already has")
    g = parser.add_argument_group("synthetic defects")
    g.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help="synthesis methods drawn uniformly per defect (diffad.synthesis.METHODS)",
    )
    g.add_argument("--good_fraction", type=float, default=0.5, help="share of samples left without a defect")
    g.add_argument(
        "--pool_size",
        type=int,
        default=64,
        help="samples per round, each reconstructed once (0: one per training image). Small rounds keep "
        "a --max_minutes budget: a round is built before its first step, about 0.3-2 s per sample on a CPU",
    )
    g.add_argument("--pool_epochs", type=int, default=4, help="epochs over one pool before drawing the next")
    g.add_argument(
        "--strength_jitter",
        type=float,
        default=0.2,
        help="reconstruct at the detection strength times a factor drawn from [1 - j, 1 + j]",
    )
    g.add_argument("--recon_batch_size", type=int, default=16, help="images per reconstruction call")
    g.add_argument(
        "--diffusion_steps", type=int, default=10, help="denoising steps of the 'diffusion' method"
    )
    add_training_args(parser, default_lr=1e-3, default_batch=8)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stage 3: train a segmentation head on synthetic defects and add it to a detection pipeline."
    )
    return add_seg_args(parser).parse_args(argv)


def check_seg_args(args) -> None:
    from diffad.models.segmentation import HEAD_RESIDUALS
    from diffad.synthesis import METHODS

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        raise ConfigError(f"--methods: unknown {unknown or 'none given'}; choose from {', '.join(METHODS)}")
    bad = [r for r in args.residual_inputs if r not in HEAD_RESIDUALS]
    if bad:
        raise ConfigError(f"--residual_inputs: unknown {bad}; choose from {', '.join(HEAD_RESIDUALS)}")
    if not 0.0 <= args.good_fraction < 1.0:
        raise ConfigError(f"--good_fraction must lie in [0, 1), not {args.good_fraction}")
    if not 0.0 <= args.strength_jitter < 1.0:
        raise ConfigError(f"--strength_jitter must lie in [0, 1), not {args.strength_jitter}")
    for name in ("pool_epochs", "recon_batch_size", "diffusion_steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.pool_size < 0:
        raise ConfigError(f"--pool_size must not be negative, not {args.pool_size}")
    if args.head_fusion < 0 or args.focal_weight < 0 or args.dice_weight < 0:
        raise ConfigError("--head_fusion, --focal_weight and --dice_weight must not be negative")


def load_pipeline(model: str | Path):
    """The detection pipeline saved in `model`, with a clear error when the folder is not one."""
    from diffad.pipelines.pipeline_anomaly_detection import AnomalyDetectionPipeline

    folder = Path(model)
    if not (folder / "model_index.json").is_file():
        raise ConfigError(
            f"--model {folder} is not a saved detection pipeline (no model_index.json); give the "
            "--output_dir of train_unet.py (or of `diffad fit`)."
        )
    pipe = AnomalyDetectionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DefectPool:
    """Synthetic samples of one round and their reconstructions: (image, reconstruction, mask) tensors.

    Round `r` is a pure function of (seed, r), so any process, or a resumed run, rebuilds the same pool.
    """

    def __init__(self, pipe, images: torch.Tensor, args, *, show_progress: bool = True):
        self.pipe = pipe
        self.images = images
        self.args = args
        self.size = args.pool_size or len(images)
        self.show = show_progress
        self.round = -1
        self.tensors: dict[str, torch.Tensor] = {}
        self.methods: list[str] = []
        self.strength = pipe.scorer.strengths[0]
        self.steps = int(pipe.scorer.config.num_inference_steps)

    def get(self, round_index: int) -> dict[str, torch.Tensor]:
        if round_index != self.round:
            self.tensors = self._build(round_index)
            self.round = round_index
        return self.tensors

    def _synthesis_kwargs(self, method: str) -> dict:
        if method != "diffusion":
            return {}
        pipe = self.pipe
        # A fresh scheduler: inpainting sets its timesteps, which must not touch the pipeline's.
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        return {
            "unet": pipe.unet,
            "vae": pipe.vae,
            "scheduler": scheduler,
            "num_inference_steps": self.args.diffusion_steps,
        }

    @torch.no_grad()
    def _build(self, r: int) -> dict[str, torch.Tensor]:
        from diffad.synthesis import synthesize

        args, n = self.args, len(self.images)
        order = torch.randperm(n, generator=generator_for(args.seed, "pool-images", r))
        images, masks, methods = [], [], []
        for k in tqdm(range(self.size), desc=f"synthetic defects (round {r})", disable=not self.show):
            g = generator_for(args.seed, "pool", r, k)
            x = self.images[int(order[k % n])]
            if args.random_flip and torch.rand((), generator=g) < 0.5:
                x = x.flip(-1)
            if torch.rand((), generator=g) < args.good_fraction:
                images.append(x)
                masks.append(torch.zeros_like(x[:1]))
                methods.append("good")
                continue
            method = args.methods[int(torch.randint(len(args.methods), (), generator=g))]
            device = self.pipe.unet.device if method == "diffusion" else x.device
            defect = synthesize(x.to(device), method, g, **self._synthesis_kwargs(method))
            images.append(defect.image.cpu().float())
            masks.append(defect.mask.cpu().float())
            methods.append(method)
        images = torch.stack(images)
        recons = self._reconstruct(images, r)
        self.methods = methods
        return {"image": images, "reconstruction": recons, "mask": torch.stack(masks)}

    def _reconstruct(self, images: torch.Tensor, r: int) -> torch.Tensor:
        args, out = self.args, []
        batch = args.recon_batch_size
        chunks = range(0, len(images), batch)
        for c in tqdm(chunks, desc=f"reconstructions (round {r})", disable=not self.show):
            g = generator_for(args.seed, "strength", r, c)
            factor = 1.0 + args.strength_jitter * (2 * torch.rand((), generator=g).item() - 1)
            strength = min(1.0, max(1e-3, self.strength * factor))
            result = self.pipe(
                images[c : c + batch],
                strength=strength,
                num_inference_steps=self.steps,
                generator=generator_for(args.seed, "reconstruction", r, c),
                output_type="pt",
                batch_size=batch,
            )
            out.append(result.reconstructions.float().cpu() * 2 - 1)  # the pipeline returns [0, 1]
        return torch.cat(out)


def head_panel(head, pool: dict[str, torch.Tensor], count: int, device) -> dict:
    """Rows for the panel: synthetic image, reconstruction, true mask, the head's probability map."""
    defects = [i for i in range(len(pool["mask"])) if pool["mask"][i].any()][:count]
    goods = [i for i in range(len(pool["mask"])) if not pool["mask"][i].any()][: max(1, count // 2)]
    idx = defects + goods
    x, x_hat, mask = (pool[k][idx] for k in ("image", "reconstruction", "mask"))
    prob = head.predict(x.to(device), x_hat.to(device)).cpu()
    return {
        "image": to_uint8(x),
        "reconstruction": to_uint8(x_hat),
        "true mask": to_uint8(mask, (0.0, 1.0)),
        "head": to_uint8(prob, (0.0, 1.0)),
    }


def save_head_into_pipeline(model_dir: str | Path, pipe, head) -> None:
    """Add `head` to the pipeline folder as `segmentation_head`, through the pipeline's save_pretrained.

    The whole pipeline is written to a new folder beside the old parts, then the head folder and
    model_index.json (last, one atomic rename) are swapped in: a reader sees the old pipeline or the
    new one. Other components are not rewritten (they were loaded from this folder unchanged), but for
    the scorer's config: its thresholds are dropped.
    """
    import os
    import shutil

    folder = Path(model_dir)
    tmp = folder / ".segmentation.tmp"
    old = folder / f".{HEAD_NAME}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    pipe.register_modules(segmentation_head=head)
    # The head changes the maps, so thresholds set on the maps before it would judge wrongly.
    pipe.scorer.register_to_config(threshold_f1=None, threshold_fpr=None)
    pipe.save_pretrained(str(tmp))
    if not (tmp / HEAD_NAME / "config.json").is_file() or not (tmp / "model_index.json").is_file():
        raise RuntimeError("the pipeline's save_pretrained did not write the segmentation head")
    if (folder / HEAD_NAME).exists():
        os.replace(folder / HEAD_NAME, old)
    os.replace(tmp / HEAD_NAME, folder / HEAD_NAME)
    os.replace(tmp / "scorer" / "config.json", folder / "scorer" / "config.json")
    os.replace(tmp / "model_index.json", folder / "model_index.json")
    shutil.rmtree(tmp)
    shutil.rmtree(old, ignore_errors=True)


def head_from_args(args):
    from diffad.models.segmentation import build_segmentation_head

    return build_segmentation_head(
        args.preset, args.channels, tuple(args.residual_inputs), args.head_fusion, args.head_stride
    )


def main(args: argparse.Namespace) -> dict:
    """Train stage 3 and save the head into --model (and a copy in --output_dir); returns a summary."""
    from diffad.models.seg_losses import segmentation_loss
    from diffad.training.checkpoints import write_final_atomic

    started = time.monotonic()  # the time budget covers loading and the first pool too
    check_seg_args(args)
    pipe = load_pipeline(args.model)
    if pipe.segmentation_head is not None and not args.overwrite_head:
        raise ConfigError(
            f"the pipeline in {args.model} already has a segmentation head; pass --overwrite_head to train a new one"
        )
    # The head works at the pipeline's resolution and channels.
    for name, value in (("resolution", pipe.resolution), ("channels", pipe.image_channels)):
        given = getattr(args, name)
        if given is not None and given != value:
            raise ConfigError(
                f"--{name} {given} differs from the pipeline in {args.model}, which works at {name} {value}; "
                f"drop --{name} or pass {value}"
            )
        setattr(args, name, value)
    samples = good_training_samples(args.data, args.category)  # before the output folder is touched
    accelerator = start_stage(args, name="train_seg", model_entries=[HEAD_NAME])
    device, main_process = accelerator.device, accelerator.is_main_process
    pipe.to(device)

    images = training_images(samples, args.resolution, args.channels, show_progress=main_process).images
    pool = DefectPool(pipe, images, args, show_progress=main_process)
    with seeded(args.seed):
        head = head_from_args(args)
    logger.info(
        f"{len(samples)} good images, pool of {pool.size} per round, head {args.preset} "
        f"({sum(p.numel() for p in head.parameters()) / 1e6:.2f} M parameters), "
        f"reconstruction at strength {pool.strength} ± {args.strength_jitter:.0%}, {pool.steps} steps"
    )

    optimizer = make_optimizer(head.parameters(), args)
    lr_scheduler = make_lr_scheduler(accelerator, optimizer, args)
    head, optimizer, lr_scheduler = accelerator.prepare(head, optimizer, lr_scheduler)
    ema = make_ema(accelerator.unwrap_model(head), args.ema_decay) if args.use_ema else None
    start_step = resume_stage(accelerator, args, ema)

    rank, world = accelerator.process_index, accelerator.num_processes
    accum = args.gradient_accumulation_steps
    per_round = args.pool_epochs * math.ceil(pool.size / (args.train_batch_size * world))

    def train_step(step: int) -> dict[str, float]:
        logs = {"loss": 0.0, "focal": 0.0, "dice": 0.0}
        for k in range(accum):
            m = step * accum + k
            r, j = divmod(m, per_round)
            tensors = pool.get(r)
            order = BatchOrder(
                pool.size,
                args.train_batch_size,
                seed=derive_seed(args.seed, "pool-order", r),
                rank=rank,
                world_size=world,
            )
            idx = order.indices(j)
            x, x_hat, mask = (tensors[key][idx].to(device) for key in ("image", "reconstruction", "mask"))
            with accelerator.accumulate(head):
                losses = segmentation_loss(
                    head(x, x_hat), mask, focal_weight=args.focal_weight, dice_weight=args.dice_weight
                )
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(head.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            for key in logs:
                logs[key] += losses[key].detach().item() / accum
        if ema is not None:
            ema.step(accelerator.unwrap_model(head).parameters())
        return {**logs, "lr": lr_scheduler.get_last_lr()[0]}

    def validate(step: int) -> None:
        if not main_process or not pool.tensors:
            return
        model = accelerator.unwrap_model(head)
        with ema_weights(model, ema):
            model.eval()
            rows = head_panel(model, pool.tensors, args.num_validation_images, device)
            model.train()
        save_panel(rows, panel_path(args, step))

    def save_final() -> None:
        model = accelerator.unwrap_model(head)
        with ema_weights(model, ema):
            final = head_from_args(args)
            final.load_state_dict(model.state_dict())
        final.eval()
        write_final_atomic(Path(args.output_dir) / HEAD_NAME, final.save_pretrained, marker="config.json")
        save_head_into_pipeline(args.model, pipe, final.to(device))
        logger.info(f"saved the segmentation head into the pipeline in {args.model}")

    return train_and_save(
        accelerator,
        args,
        name="seg",
        start_step=start_step,
        started=started,
        train_step=train_step,
        validate=validate,
        save_final=save_final,
        ema=ema,
    )
