"""OpenSimplex noise sampled on rotated, scaled pixel coordinates: the simplex choice for defect masks."""

from __future__ import annotations

import torch

from diffad.synthesis.common import randint
from diffad.synthesis.perlin import rotated_grid


def rotated_simplex(
    shape: tuple[int, int],
    res: tuple[float, float],
    *,
    generator: torch.Generator,
    angle: float = 0.0,
    device=None,
) -> torch.Tensor:
    """OpenSimplex noise (H, W) with about `res` features down and across, rotated by `angle` degrees."""
    from diffad.noise.opensimplex import opensimplex2

    v, u = rotated_grid(shape, res, angle, dtype=torch.float64)
    seed = randint(generator, 0, 2**31 - 1)
    # A random offset so that different seeds do not share the same value at the origin.
    oy, ox = randint(generator, 0, 4096), randint(generator, 0, 4096)
    v, u = v + oy, u + ox
    return opensimplex2(u, v, seed=seed).to(device=device, dtype=torch.float32)
