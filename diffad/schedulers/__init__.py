"""DDPM and DDIM schedulers whose steps take simplex or Gaussian noise."""

import inspect

from diffad.schedulers.ddim import NoiseDDIMScheduler
from diffad.schedulers.ddpm import NoiseDDPMScheduler
from diffad.schedulers.timesteps import partial_timesteps

SAMPLER_CLASSES = {"ddim": NoiseDDIMScheduler, "ddpm": NoiseDDPMScheduler}


def fresh_scheduler(config, sampler: str):
    """A new scheduler of `sampler`'s class with `config`'s noise schedule (stepping changes a
    scheduler's state, so a pipeline's own scheduler component is never stepped)."""
    cls = SAMPLER_CLASSES[sampler]
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in accepted})


__all__ = [
    "NoiseDDIMScheduler",
    "NoiseDDPMScheduler",
    "SAMPLER_CLASSES",
    "fresh_scheduler",
    "partial_timesteps",
]
