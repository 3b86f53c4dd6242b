"""The step loop both stages share: progress bar, logging, panels, checkpoints, the time budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from accelerate.logging import get_logger
from tqdm.auto import tqdm

from diffad.training.accelerate_setup import Deadline

logger = get_logger("diffad.training")


@dataclass
class LoopResult:
    start_step: int
    step: int  # optimizer steps done when the loop ended
    seconds: float
    stopped_for_time: bool
    last_logs: dict[str, float] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return (self.step - self.start_step) / self.seconds if self.seconds > 0 else 0.0

    def summary(self, stage: str) -> dict:
        """What a stage's main() returns (and `diffad fit` reports): steps, speed, last losses."""
        return {
            "stage": stage,
            "start_step": self.start_step,
            "steps": self.step,
            "seconds": round(self.seconds, 3),
            "steps_per_second": self.steps_per_second,
            "stopped_for_time": self.stopped_for_time,
            **self.last_logs,
        }


def run_steps(
    accelerator,
    args,
    *,
    start_step: int,
    train_step: Callable[[int], dict[str, float]],
    save_checkpoint: Callable[[int], None],
    validate: Callable[[int], None],
    desc: str,
    started: float | None = None,
) -> LoopResult:
    """Call `train_step(step)` (one optimizer step, all micro-batches) until --max_train_steps.

    After each step: log, write a panel every --validation_steps (and at the end), a checkpoint
    every --checkpointing_steps. When --max_minutes runs out every rank stops at the same step and
    a checkpoint is written, so the run can be continued with --resume_from_checkpoint latest.
    The budget counts from `started` (time.monotonic() when the stage began; default: now).
    """
    deadline = Deadline(accelerator, args.max_minutes, started)
    bar = tqdm(
        total=args.max_train_steps,
        initial=start_step,
        desc=desc,
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    step, logs, late = start_step, {}, False
    t0 = time.perf_counter()
    while step < args.max_train_steps:
        logs = train_step(step)
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
        accelerator.log(logs, step=step)
        if args.validation_steps and step % args.validation_steps == 0:
            validate(step)
        late = deadline.passed() and step < args.max_train_steps
        if late or (args.checkpointing_steps and step % args.checkpointing_steps == 0):
            save_checkpoint(step)
        if late:
            logger.info(f"--max_minutes {args.max_minutes} reached at step {step}: stopping")
            break
    bar.close()
    if args.validation_steps and step > start_step and step % args.validation_steps:
        validate(step)  # a panel of the final weights too
    return LoopResult(start_step, step, time.perf_counter() - t0, late, logs)
