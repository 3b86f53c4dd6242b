"""Seeded image augmentations for defect fills: DRAEM's texture changes, CutPaste's colour jitter, blur.

All take and return (C, H, W) tensors in [-1, 1] and draw from a torch.Generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffad.synthesis.common import randint, uniform


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with reflected borders."""
    if sigma <= 0:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    h, w = image.shape[-2:]
    radius = min(radius, h - 1, w - 1) if min(h, w) > 1 else 0
    if radius == 0:
        return image
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


def _to_unit(x):
    return (x + 1) / 2


def _from_unit(x):
    return (x.clamp(0, 1) * 2) - 1


def color_jitter(image: torch.Tensor, generator: torch.Generator, amount: float = 0.1) -> torch.Tensor:
    """CutPaste's jitter: brightness, contrast and (colour images) saturation, each by up to `amount`."""
    x = _to_unit(image)
    x = x * uniform(generator, 1 - amount, 1 + amount)
    c = uniform(generator, 1 - amount, 1 + amount)
    x = (x - x.mean()) * c + x.mean()
    if image.shape[0] == 3:
        grey = x.mean(0, keepdim=True)
        x = grey + (x - grey) * uniform(generator, 1 - amount, 1 + amount)
    return _from_unit(x)


def _gamma(x, g):
    return _from_unit(_to_unit(x).clamp(0, 1) ** uniform(g, 0.5, 2.0))


def _brightness(x, g):
    return _from_unit(_to_unit(x) * uniform(g, 0.8, 1.2) + uniform(g, -0.3, 0.3))


def _sharpen(x, g):
    return (x + uniform(g, 0.5, 2.0) * (x - gaussian_blur(x, 1.0))).clamp(-1, 1)


def _solarize(x, g):
    t = uniform(g, -0.5, 0.8)
    return torch.where(x > t, -x, x)


def _posterize(x, g):
    levels = 2 ** randint(g, 2, 5)
    return _from_unit(torch.floor(_to_unit(x) * levels) / (levels - 1))


def _invert(x, g):
    return -x


def _autocontrast(x, g):
    lo, hi = x.amin(), x.amax()
    return ((x - lo) / (hi - lo).clamp_min(1e-6)) * 2 - 1


def _equalize(x, g):
    # Histogram equalisation by rank: each value goes to its quantile.
    flat = x.flatten()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel(), dtype=flat.dtype, device=flat.device)
    return (ranks / max(1, flat.numel() - 1) * 2 - 1).view_as(x)


def _channel_shuffle(x, g):
    if x.shape[0] != 3:
        return _gamma(x, g)
    return x[torch.randperm(3, generator=g, device=g.device).to(x.device)]


def _rotate_flip(x, g):
    x = torch.rot90(x, randint(g, 0, 4), dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if randint(g, 0, 2) else x


# DRAEM picks three of imgaug's GammaContrast, MultiplyAndAddToBrightness, pillike.EnhanceSharpness,
# AddToHueAndSaturation, Solarize, Posterize, Invert, Autocontrast, Equalize and Affine(rotate).
AUGMENTATIONS = {
    "gamma": _gamma,
    "brightness": _brightness,
    "sharpen": _sharpen,
    "channels": _channel_shuffle,
    "solarize": _solarize,
    "posterize": _posterize,
    "invert": _invert,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "rotate_flip": _rotate_flip,
}


def random_augment(
    image: torch.Tensor, generator: torch.Generator, count: int = 3
) -> tuple[torch.Tensor, list]:
    """Apply `count` distinct augmentations drawn at random; returns the image and their names."""
    names = list(AUGMENTATIONS)
    order = torch.randperm(len(names), generator=generator, device=generator.device)[:count].tolist()
    chosen = [names[i] for i in order]
    size = tuple(image.shape[-2:])
    for name in chosen:
        image = AUGMENTATIONS[name](image, generator)
    return resize(image, size), chosen  # a quarter turn of a non-square image changes its shape


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def random_crop_resized(
    image: torch.Tensor, generator: torch.Generator, size: tuple[int, int], scale: tuple[float, float]
) -> torch.Tensor:
    """A crop with sides `scale` times the image's, at a random place, resized to `size`."""
    h, w = image.shape[-2:]
    s = uniform(generator, *scale)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    top, left = randint(generator, 0, h - ch + 1), randint(generator, 0, w - cw + 1)
    return resize(image[:, top : top + ch, left : left + cw], size)
