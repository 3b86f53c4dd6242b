"""DDPM and DDIM schedulers whose steps take simplex or Gaussian noise."""

from diffad.schedulers.ddim import NoiseDDIMScheduler
from diffad.schedulers.ddpm import NoiseDDPMScheduler
from diffad.schedulers.timesteps import partial_timesteps

__all__ = ["NoiseDDIMScheduler", "NoiseDDPMScheduler", "partial_timesteps"]
