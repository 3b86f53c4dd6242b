"""Residuals of the input latent and the UNet alone, with no denoising loop ("direct" residuals).

- latent_norm: each position's latent norm; for a position-whitened feature first stage, PaDiM's
  Mahalanobis distance.
- denoise: the noise-prediction error ||ε̂(z_t, t) - ε|| per position, averaged over timesteps and
  noise draws: how badly the model trained on good latents explains this one.
- score: ||ε̂(z_0, t)|| / sqrt(1 - ᾱ_t) with the clean latent as z_t, the norm of the model's score
  estimate: deterministic. Under the Gaussian prior of a whitened first stage an untrained UNet gives
  exactly latent_norm, and training adds what the per-position Gaussians miss.
"""

from __future__ import annotations

import torch


def direct_residual(
    name: str, z0: torch.Tensor, predict, alphas_cumprod, timesteps, draws: int, draw
) -> torch.Tensor:
    """(N, h, w) at the latent grid. `predict(z_t, t)` is the noise prediction, `draw()` one noise draw
    shaped like z0 (seeded per image by the caller)."""
    if name == "latent_norm":
        return z0.float().pow(2).sum(1).sqrt()
    alphas = alphas_cumprod.to(z0.device)
    total = 0.0
    for step in timesteps:
        t = torch.tensor(int(step), device=z0.device)
        if name == "score":
            total = total + predict(z0, t).float().pow(2).sum(1) / (1 - alphas[t])
            continue
        for _ in range(draws):
            noise = draw()
            z_t = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * noise
            total = total + (predict(z_t, t) - noise).float().pow(2).sum(1)
    count = len(timesteps) * (1 if name == "score" else draws)
    return (total / count).sqrt()
