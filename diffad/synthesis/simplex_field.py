"""OpenSimplex noise sampled on rotated, scaled pixel coordinates: the simplex choice for defect masks."""

from __future__ import annotations

import math

import torch

from diffad.synthesis.common import randint


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

    h, w = shape
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h - 0.5
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w - 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    seed = randint(generator, 0, 2**31 - 1)
    # A random offset so that different seeds do not share the same value at the origin.
    oy, ox = randint(generator, 0, 4096), randint(generator, 0, 4096)
    v = (s * x + c * y) * res[0] + oy
    u = (c * x - s * y) * res[1] + ox
    return opensimplex2(u, v, seed=seed).to(device=device, dtype=torch.float32)
