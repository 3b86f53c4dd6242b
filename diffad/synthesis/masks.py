"""Defect masks from thresholded noise at a random scale and rotation, as DRAEM draws them.

DRAEM draws Perlin noise with 2**k (k in 0..5) lattice periods along each axis, rotates it by up to
90 degrees and keeps where it exceeds 0.5. The mask is kept inside the foreground when one is given;
a draw that leaves nothing is redrawn, and after `tries` the top `fallback_fraction` of the noise
inside the foreground is taken, so the mask is never empty.
"""

from __future__ import annotations

import torch

from diffad.errors import ConfigError
from diffad.synthesis.common import randint, uniform
from diffad.synthesis.perlin import perlin_noise

NOISE_KINDS = ("perlin", "simplex")


def noise_field(
    shape: tuple[int, int],
    res: tuple[float, float],
    *,
    generator: torch.Generator,
    angle: float = 0.0,
    kind: str = "perlin",
    device=None,
) -> torch.Tensor:
    """One noise field (H, W) in about [-1, 1] with `res` periods down and across, rotated by `angle`."""
    if kind == "perlin":
        return perlin_noise(shape, res, generator=generator, angle=angle, device=device)
    if kind == "simplex":
        from diffad.synthesis.simplex_field import rotated_simplex

        return rotated_simplex(shape, res, generator=generator, angle=angle, device=device)
    raise ConfigError(f"mask noise must be one of {NOISE_KINDS}, not {kind!r}")


def noise_mask(
    shape: tuple[int, int],
    generator: torch.Generator,
    *,
    foreground: torch.Tensor | None = None,
    noise: str = "perlin",
    scale_exponents: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
    rotation: tuple[float, float] = (-90.0, 90.0),
    tries: int = 8,
    fallback_fraction: float = 0.05,
    device=None,
) -> tuple[torch.Tensor, dict]:
    """A 0/1 float mask (1, H, W), never empty, and the parameters drawn for it."""
    h, w = shape
    # Periods shorter than 4 px turn the mask into salt and pepper: cap the lattice there.
    max_res = max(1, min(h, w) // 4)
    lo, hi = scale_exponents
    for n in range(1, tries + 1):
        res = (min(2 ** randint(generator, lo, hi), max_res), min(2 ** randint(generator, lo, hi), max_res))
        angle = uniform(generator, *rotation)
        field = noise_field(shape, res, generator=generator, angle=angle, kind=noise, device=device)
        mask = field > threshold
        if foreground is not None:
            mask = mask & foreground[0]
        if mask.any():
            params = {
                "mask_noise": noise,
                "mask_res": list(res),
                "mask_angle": round(angle, 3),
                "mask_threshold": threshold,
            }
            params["mask_attempts"] = n
            return mask[None].float(), params
    # The last field has no point above the threshold inside the foreground: take its top few percent.
    inside = field if foreground is None else field[foreground[0]]
    cut = torch.quantile(inside.flatten().float(), 1.0 - fallback_fraction)
    mask = field >= cut
    if foreground is not None:
        mask = mask & foreground[0]
    params = {
        "mask_noise": noise,
        "mask_res": list(res),
        "mask_angle": round(angle, 3),
        "mask_threshold": round(float(cut), 4),
    }
    params["mask_attempts"] = tries + 1
    return mask[None].float(), params
