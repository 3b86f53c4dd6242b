"""The Accelerator both stages run under, and the few things every rank must agree on."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration
from diffusers.optimization import get_scheduler

from diffad.distributed import cpu_only_launch
from diffad.errors import ConfigError

logger = get_logger("diffad.training")


def make_accelerator(args) -> Accelerator:
    """An Accelerator from the shared arguments (mixed precision, accumulation, trackers)."""
    if args.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                "--report_to tensorboard needs the tensorboard package: pip install 'diffad[tensorboard]', "
                "or pass --report_to none."
            ) from err
    out = Path(args.output_dir)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs"))
    # Batches come from our own sampler, not a prepared DataLoader: accumulate by count alone.
    plugin = GradientAccumulationPlugin(
        num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
    )
    try:
        accelerator = Accelerator(
            cpu=cpu_only_launch(),
            gradient_accumulation_plugin=plugin,
            mixed_precision=args.mixed_precision,
            log_with=None if args.report_to == "none" else args.report_to,
            project_config=project,
        )
    except ValueError as err:  # e.g. fp16 on a machine without a GPU
        raise ConfigError(f"--mixed_precision {args.mixed_precision}: {err}") from err
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(
        f"process {accelerator.process_index}/{accelerator.num_processes} on {accelerator.device} "
        f"(mixed precision {accelerator.mixed_precision}, accumulation {args.gradient_accumulation_steps})",
        main_process_only=False,
    )
    return accelerator


def reset_accelerate_state() -> None:
    """Forget the process-wide accelerate singletons so a second stage can build its own Accelerator."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def init_trackers(accelerator: Accelerator, name: str, args) -> None:
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | bool)}
        accelerator.init_trackers(name, config=config)


@contextlib.contextmanager
def seeded(seed: int):
    """Run model construction under `seed` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_lr_scheduler(accelerator: Accelerator, optimizer, args):
    # accelerate steps a prepared scheduler once per process per optimizer step, as in diffusers' examples.
    n = accelerator.num_processes
    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * n,
        num_training_steps=args.max_train_steps * n,
    )


class Deadline:
    """A wall-clock budget all ranks agree on: the main process decides, everyone stops together."""

    def __init__(self, accelerator: Accelerator, minutes: float | None, started: float | None = None):
        self.accelerator = accelerator
        start = time.monotonic() if started is None else started
        self.end = None if minutes is None else start + 60.0 * minutes

    def passed(self) -> bool:
        if self.end is None:
            return False
        if self.accelerator.is_main_process and time.monotonic() >= self.end:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()


def is_distributed() -> bool:
    return PartialState().num_processes > 1
