"""Command-line arguments both training stages share (names follow diffusers' training examples)."""

from __future__ import annotations

import argparse

from diffad.errors import ConfigError


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data", required=True, help="dataset folder (MVTec AD, VisA, Real-IAD, plain folder) or 'elpv'"
    )
    g.add_argument("--category", default=None, help="category inside --data (needed when it holds several)")
    g.add_argument("--resolution", type=int, default=128, help="square training size in pixels")
    g.add_argument("--channels", type=int, choices=(1, 3), default=3, help="image channels the models see")
    g.add_argument("--random_flip", action="store_true", help="flip training images left-right at random")
    g.add_argument("--dataloader_num_workers", type=int, default=0)


def add_training_args(parser: argparse.ArgumentParser, *, default_lr: float, default_batch: int) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", required=True, help="where checkpoints, samples and the final model go")
    g.add_argument(
        "--overwrite_output_dir",
        "--overwrite",
        dest="overwrite_output_dir",
        action="store_true",
        help="write into a folder that holds other files (--overwrite: the same)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max_train_steps", type=int, default=2000, help="optimizer steps")
    g.add_argument("--max_minutes", type=float, default=None, help="stop (and save) after this many minutes")
    g.add_argument(
        "--train_batch_size", type=int, default=default_batch, help="images per process per micro-batch"
    )
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=default_lr)
    g.add_argument(
        "--lr_scheduler",
        default="constant_with_warmup",
        choices=("constant", "constant_with_warmup", "linear", "cosine"),
    )
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument(
        "--mixed_precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="default: the accelerate config's (`accelerate launch`), else no",
    )
    g.add_argument("--use_ema", action="store_true", help="keep an EMA of the weights and save that")
    g.add_argument("--ema_decay", type=float, default=0.999)
    g.add_argument("--checkpointing_steps", type=int, default=500, help="write checkpoint-N every N steps")
    g.add_argument(
        "--checkpoints_total_limit", type=int, default=2, help="keep at most this many checkpoints"
    )
    g.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-N folder")
    g.add_argument(
        "--validation_steps", type=int, default=250, help="write a sample panel every N steps (0: never)"
    )
    g.add_argument("--num_validation_images", type=int, default=4)
    g.add_argument("--report_to", choices=("tensorboard", "none"), default="none")


def check_training_args(args: argparse.Namespace) -> None:
    """Reject values no run could use, before any file or process is touched."""
    if args.resolution < 8:  # the floor of every diffad command (the scorer works at 8 px and up)
        raise ConfigError(f"--resolution must be at least 8, not {args.resolution}")
    positive = ["max_train_steps", "train_batch_size", "gradient_accumulation_steps"]
    for name in positive:
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.learning_rate <= 0:
        raise ConfigError(f"--learning_rate must be positive, not {args.learning_rate}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise ConfigError(f"--max_minutes must be positive, not {args.max_minutes}")
    if not 0.0 < args.ema_decay < 1.0:
        raise ConfigError(f"--ema_decay must lie in (0, 1), not {args.ema_decay}")
    for name in ("checkpointing_steps", "validation_steps", "lr_warmup_steps", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} must not be negative")


def check_resolution(resolution: int, factor: int, what: str) -> None:
    if resolution % factor:
        lower = max(factor, resolution - resolution % factor)
        raise ConfigError(
            f"--resolution {resolution} is not divisible by {factor}, the downsampling factor of {what}; "
            f"use a multiple of {factor} such as {lower} or {lower + factor}."
        )
