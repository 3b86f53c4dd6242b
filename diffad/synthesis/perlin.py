"""Perlin gradient noise in torch, seeded, at any size, scale and rotation (as DRAEM draws its masks).

The lattice is laid over rotated pixel coordinates, so a rotated mask needs no resampling and the
image size need not be a multiple of the lattice period.
"""

from __future__ import annotations

import math

import torch


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def rotated_grid(
    shape: tuple[int, int], res: tuple[float, float], angle: float, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise coordinates (v down, u across) of each pixel centre: rotated by `angle` degrees about the
    image centre and scaled so the image spans `res` = (periods down, periods across)."""
    h, w = shape
    ys = (torch.arange(h, dtype=dtype) + 0.5) / h - 0.5
    xs = (torch.arange(w, dtype=dtype) + 0.5) / w - 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return (s * x + c * y) * res[0], (c * x - s * y) * res[1]


def perlin_noise(
    shape: tuple[int, int],
    res: tuple[float, float],
    *,
    generator: torch.Generator,
    angle: float = 0.0,
    device=None,
) -> torch.Tensor:
    """Perlin noise (H, W) with `res` = (periods down, periods across) the image, rotated by `angle` degrees.

    Values lie in about [-1, 1] (the sqrt(2) factor of DRAEM's rand_perlin_2d).
    """
    v, u = rotated_grid(shape, res, angle)
    # Shift the lattice coordinates to start at 0, so the gradient table is indexed from there.
    v = v - v.min()
    u = u - u.min()
    i0, j0 = v.floor().long(), u.floor().long()
    fv, fu = v - i0, u - j0
    rows, cols = int(i0.max()) + 2, int(j0.max()) + 2
    angles = 2 * math.pi * torch.rand((rows, cols), generator=generator, device=generator.device)
    angles = angles.cpu().flatten()
    gy, gx = torch.cos(angles), torch.sin(angles)
    flat = i0 * cols + j0

    def corner(di: int, dj: int) -> torch.Tensor:
        k = flat + (di * cols + dj)
        return gy[k] * (fv - di) + gx[k] * (fu - dj)

    tv, tu = _fade(fv), _fade(fu)
    top = torch.lerp(corner(0, 0), corner(0, 1), tu)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), tu)
    noise = math.sqrt(2) * torch.lerp(top, bottom, tv)
    return noise.to(device)


def fractal_noise(
    shape: tuple[int, int],
    res: tuple[float, float],
    *,
    generator: torch.Generator,
    octaves: int = 4,
    persistence: float = 0.5,
    angle: float = 0.0,
    device=None,
) -> torch.Tensor:
    """Octaves of Perlin noise (doubling frequency, amplitude times `persistence`), normalised to [-1, 1]."""
    total = torch.zeros(shape, device=device)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        f = 2**octave
        total = total + amplitude * perlin_noise(
            shape, (res[0] * f, res[1] * f), generator=generator, angle=angle, device=device
        )
        norm += amplitude
        amplitude *= persistence
    return (total / norm).clamp(-1, 1)
