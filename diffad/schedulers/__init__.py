"""DDPM and DDIM schedulers whose steps take simplex or Gaussian noise."""
