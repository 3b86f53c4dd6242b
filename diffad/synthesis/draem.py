"""DRAEM-style defects: a thresholded-noise mask filled with something that does not belong there.

Fills that ADD structure (Zavrtanik et al., DRAEM, ICCV 2021):
  "texture"  a random image of a texture folder, cropped and put through three random augmentations;
  "self"     an augmented crop of the image itself (for when there is no texture folder);
  "noise"    procedural fractal noise at a random scale, level and contrast.
Fills that REMOVE structure (a patch where the texture is missing, like DAGM's defects):
  "blur"     the image under a Gaussian blur of 1-4 % of its size;
  "smooth"   a much stronger blur, shifted a little in brightness;
  "flat"     the mean grey level of the masked region, shifted a little.
The fill is blended with an opacity drawn from `opacity` (DRAEM's beta is 1 - opacity).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from diffad.errors import ConfigError
from diffad.synthesis.augment import gaussian_blur, random_augment, random_crop_resized
from diffad.synthesis.common import attempt, batched, choice, randint, resolve_foreground, rounded, uniform
from diffad.synthesis.masks import noise_mask
from diffad.synthesis.perlin import fractal_noise
from diffad.synthesis.textures import TextureBank

ADDING_FILLS = ("texture", "self", "noise")
REMOVING_FILLS = ("blur", "smooth", "flat")
FILLS = ADDING_FILLS + REMOVING_FILLS


def _fill_choices(fill, textures) -> tuple[str, ...]:
    if fill is None:
        choices = FILLS if textures is not None else tuple(f for f in FILLS if f != "texture")
    else:
        choices = (fill,) if isinstance(fill, str) else tuple(fill)
    unknown = [f for f in choices if f not in FILLS]
    if unknown or not choices:
        raise ConfigError(f"unknown DRAEM fill {unknown or choices}; choose from {', '.join(FILLS)}")
    if "texture" in choices and textures is None:
        raise ConfigError("the 'texture' fill needs a texture folder: pass textures=FOLDER (--textures)")
    return choices


def make_fill(
    kind: str,
    image: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
    textures: TextureBank | None,
) -> tuple[torch.Tensor, dict]:
    """The fill image (C, H, W) of one kind, and what was drawn to make it."""
    c, h, w = image.shape
    size = min(h, w)
    if kind == "texture":
        index = randint(generator, 0, len(textures))
        texture = textures.get(index, c).to(image.device)
        fill = random_crop_resized(texture, generator, (h, w), scale=(0.3, 1.0))
        fill, augs = random_augment(fill, generator)
        return fill, {"texture": textures.name(index), "augmentations": augs}
    if kind == "self":
        fill = random_crop_resized(image, generator, (h, w), scale=(0.25, 1.0))
        fill, augs = random_augment(fill, generator)
        return fill, {"augmentations": augs}
    if kind == "noise":
        res = 2 ** randint(generator, 1, 6)
        noise = fractal_noise(
            (h, w),
            (res, res),
            generator=generator,
            octaves=randint(generator, 2, 6),
            angle=uniform(generator, -90, 90),
            device=image.device,
        )
        level = torch.tensor([uniform(generator, -0.8, 0.8) for _ in range(c)], device=image.device)
        contrast = uniform(generator, 0.2, 0.9)
        return (level[:, None, None] + contrast * noise).clamp(-1, 1), {
            "noise_res": res,
            "level": rounded(level.tolist()),
            "contrast": rounded(contrast),
        }
    if kind == "blur":
        sigma = max(1.0, uniform(generator, 0.01, 0.04) * size)
        return gaussian_blur(image, sigma), {"sigma": rounded(sigma)}
    if kind == "smooth":
        sigma = max(1.5, uniform(generator, 0.05, 0.12) * size)
        shift = uniform(generator, -0.15, 0.15)
        return (gaussian_blur(image, sigma) + shift).clamp(-1, 1), {
            "sigma": rounded(sigma),
            "shift": rounded(shift),
        }
    if kind == "flat":
        inside = mask[0] > 0
        mean = image[:, inside].mean(1) if inside.any() else image.mean((1, 2))
        shift = uniform(generator, -0.1, 0.1)
        return (mean[:, None, None] + shift).expand_as(image).clamp(-1, 1), {"shift": rounded(shift)}
    raise ConfigError(f"unknown DRAEM fill {kind!r}; choose from {', '.join(FILLS)}")


@batched
def draem_anomaly(
    image: torch.Tensor,
    generator: torch.Generator | int | None = None,
    *,
    foreground=None,
    fill: str | Sequence[str] | None = None,
    textures: TextureBank | str | Path | None = None,
    opacity: tuple[float, float] | None = None,
    mask: torch.Tensor | None = None,
    mask_noise: str = "perlin",
    mask_scale: tuple[int, int] | None = None,
    feather: float | None = None,
):
    """A DRAEM-style defect on `image` (C, H, W) or a batch, in [-1, 1].

    Returns `SyntheticDefect(image, mask)`: the defective image and its 0/1 mask (1, H, W); only the
    pixels inside the mask differ from the input. `fill` picks one kind or draws from several (all
    kinds by default, "texture" only with `textures`). `foreground` is None, "auto" (Otsu estimate)
    or a mask; the defect stays inside it. `opacity` defaults to (0.2, 1) for fills that add texture
    and (0.6, 1) for those that remove it. `mask_scale` = (lo, hi): the mask's noise has 2**k periods
    across the image, k drawn from [lo, hi) per axis (default (0, 6), and (0, 3) for removing fills,
    whose patches are larger and fewer). `feather` softens the mask edge by that many pixels
    (default: 1 px for fills that remove texture, none otherwise); the mask covers the softened edge.
    """
    if isinstance(textures, (str, Path)):
        textures = TextureBank(textures)
    choices = _fill_choices(fill, textures)
    fg = resolve_foreground(image, foreground)
    h, w = image.shape[-2:]

    def draw():
        kind = choice(generator, choices)
        removing = kind in REMOVING_FILLS
        if mask is not None:
            m = (torch.as_tensor(mask, device=image.device).reshape(1, h, w) > 0.5).float()
            params = {"mask": "given"}
        else:
            # A patch without texture is one smooth region, not a spray of small ones: coarse masks.
            scale = mask_scale or ((0, 3) if removing else (0, 6))
            m, params = noise_mask(
                (h, w), generator, foreground=fg, noise=mask_noise, scale_exponents=scale, device=image.device
            )
        fill_image, fill_params = make_fill(kind, image, m, generator, textures)
        low, high = opacity or ((0.6, 1.0) if removing else (0.2, 1.0))
        beta = uniform(generator, low, high)
        soft = feather if feather is not None else (1.0 if removing else 0.0)
        alpha = m
        if soft > 0:
            # Blur the mask but never below its own core, and drop the faint tail (< 10 %).
            alpha = torch.maximum(gaussian_blur(m, soft), m)
            alpha = torch.where(alpha < 0.1, torch.zeros_like(alpha), alpha)
        params.update(
            {"method": "draem", "fill": kind, "opacity": rounded(beta), "feather": soft, **fill_params}
        )
        return fill_image, alpha * beta, params

    return attempt(image, generator, fg, draw)
