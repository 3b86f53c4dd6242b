"""Start, resume and finish a training stage: what train_vae and train_unet do alike around their step."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.logging import get_logger

from diffad.training.accelerate_setup import init_trackers, make_accelerator
from diffad.training.args import check_training_args
from diffad.training.checkpoints import (
    ARGS_FILE,
    check_output_dir,
    prepare_output_dir,
    read_checkpoint_step,
    resolve_resume,
    save_checkpoint,
    write_json_atomic,
)
from diffad.training.ema import load_ema, save_ema
from diffad.training.loop import LoopResult, run_steps

logger = get_logger("diffad.training")


def start_stage(args, *, name: str, model_entries: list[str]):
    """Check the arguments and the output folder on every rank, then build the Accelerator's run."""
    check_training_args(args)
    accelerator = make_accelerator(args)
    resume = args.resume_from_checkpoint
    # Every rank reads the folder before any rank writes to it, so all refuse (or accept) alike.
    check_output_dir(
        args.output_dir, overwrite=args.overwrite_output_dir, resume=resume, model_entries=model_entries
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = prepare_output_dir(args.output_dir, overwrite=args.overwrite_output_dir and not resume)
        write_json_atomic(out / ARGS_FILE, {"stage": name, **vars(args)})
    accelerator.wait_for_everyone()
    init_trackers(accelerator, name, args)
    return accelerator


def make_optimizer(params, args) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
    )


def optimizer_update(accelerator, loss, model, optimizer, lr_scheduler, max_grad_norm: float) -> None:
    """Backward, and at the end of an accumulation (accelerator.sync_gradients) clip and step.

    Call inside `accelerator.accumulate(...)`: the prepared optimizer and scheduler skip their step
    on the micro-batches in between.
    """
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()


def resume_stage(accelerator, args, ema=None) -> int:
    """Load --resume_from_checkpoint (after `accelerator.prepare`) and return the step to continue from."""
    path = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    if path is None:
        if args.resume_from_checkpoint:
            logger.info(f"no checkpoint in {args.output_dir}: starting a new run")
        return 0
    step = read_checkpoint_step(path)
    accelerator.load_state(str(path))
    load_ema(ema, path, accelerator.device)
    logger.info(f"resuming from {path} at step {step}")
    return step


def checkpoint_writer(accelerator, args, ema=None):
    """The `save_checkpoint(step)` callback of the step loop."""

    def write(step: int) -> None:
        path = save_checkpoint(
            accelerator,
            args.output_dir,
            step,
            total_limit=args.checkpoints_total_limit,
            extra=lambda folder: save_ema(ema, folder),
        )
        logger.info(f"saved {path}")

    return write


def panel_path(args, step: int) -> Path:
    return Path(args.output_dir) / "samples" / f"step-{step:06d}.png"


def train_and_save(
    accelerator,
    args,
    *,
    name: str,
    start_step: int,
    started: float,
    train_step,
    validate,
    save_final,
    ema=None,
) -> dict:
    """Run the step loop, then `save_final()` on the main process; returns the stage's summary."""
    result: LoopResult = run_steps(
        accelerator,
        args,
        start_step=start_step,
        train_step=train_step,
        save_checkpoint=checkpoint_writer(accelerator, args, ema),
        validate=validate,
        started=started,
        desc=f"train_{name}",
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final()
        logger.info(f"saved the {name} stage's result to {args.output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result.summary(name)
