"""From `strength` to the timesteps of a partial denoising run (noise part of the way, denoise back)."""

import inspect

import numpy as np
import torch

from diffad.errors import ConfigError


def partial_timesteps(scheduler, strength: float, num_inference_steps: int) -> tuple[int, torch.LongTensor]:
    """Noise `strength` of the schedule, then denoise to the clean sample in `num_inference_steps` steps.

    `t_start = round(strength * num_train_timesteps)` is the number of forward steps, AnoDDPM's t_λ
    (strength 0.25 of 1000 steps is 250). In diffusers' 0-based timesteps the noisy sample after
    `t_start` forward steps sits at `t_start - 1`, so the returned timesteps run evenly from
    `t_start - 1` down towards 0 and the last step lands on the clean sample; noise the input with
    `scheduler.add_noise(x0, noise, timesteps[:1])`. With `num_inference_steps == t_start` every
    step is taken: `t_start - 1, ..., 1, 0`, exactly AnoDDPM's loop.

    Also calls `scheduler.set_timesteps(timesteps=...)`, so that each step lands on the next
    timestep of the list (DDPMScheduler and NoiseDDIMScheduler support this).

    Returns:
        (t_start, timesteps) with `timesteps` a descending LongTensor of `num_inference_steps`
        entries (fewer when `num_inference_steps > t_start`: then every step).
    """
    num_train = int(scheduler.config.num_train_timesteps)
    if not (isinstance(strength, int | float) and 0 < strength <= 1):
        raise ConfigError(f"strength must be in (0, 1], got {strength!r}")
    if not (isinstance(num_inference_steps, int) and num_inference_steps >= 1):
        raise ConfigError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    t_start = max(1, min(num_train, int(round(strength * num_train))))
    steps = min(num_inference_steps, t_start)
    # Even spacing of t_start forward steps: step k is at (t_start - k * t_start / steps) - 1.
    timesteps = np.round(t_start - np.arange(steps) * (t_start / steps)).astype(np.int64) - 1
    if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ConfigError(
            f"{type(scheduler).__name__} cannot run an explicit list of timesteps: "
            "use NoiseDDPMScheduler or NoiseDDIMScheduler"
        )
    scheduler.set_timesteps(timesteps=timesteps.tolist())
    return t_start, scheduler.timesteps.clone()
