"""What every defect generator shares: seeded draws, the result type, and the final compose.

A generator draws a fill image and a per-pixel opacity `alpha`; `compose` blends them into the image
and returns the mask as the support of alpha, so that no pixel outside the mask changes. `attempt`
retries a draw that changed nothing and falls back to a spot, so the mask is never empty.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from diffad.errors import ConfigError, DataError

# A defect must move at least one pixel by this much (in [-1, 1] units, ~6 grey levels) to count.
MIN_CHANGE = 0.05


class SyntheticDefect(tuple):
    """`(image, mask)` as a plain tuple, with the drawn parameters in `.params` (a JSON-able dict)."""

    def __new__(cls, image: torch.Tensor, mask: torch.Tensor, params: dict | list):
        self = super().__new__(cls, (image, mask))
        self.params = params
        return self

    @property
    def image(self) -> torch.Tensor:
        return self[0]

    @property
    def mask(self) -> torch.Tensor:
        return self[1]


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A torch.Generator from a generator, a seed, or None (a fixed default seed, never the global RNG)."""
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator, device=generator.device).item()


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=generator, device=generator.device).item())


def choice(generator: torch.Generator, options: Sequence):
    return options[randint(generator, 0, len(options))]


def rand(generator: torch.Generator, *shape: int, device=None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randn(generator: torch.Generator, *shape: int, device=None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def check_image(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ConfigError(
            f"expected an image tensor (C, H, W) in [-1, 1], got {type(image).__name__}"
            f"{tuple(image.shape) if isinstance(image, torch.Tensor) else ''}"
        )
    return image.float()


def resolve_foreground(image: torch.Tensor, foreground) -> torch.Tensor | None:
    """None (whole image), "auto" (estimated, see foreground.py) or a mask (1,H,W)/(H,W) -> bool (1,H,W)."""
    if foreground is None or (isinstance(foreground, str) and foreground == "none"):
        return None
    if isinstance(foreground, str):
        if foreground != "auto":
            raise ConfigError(f"foreground must be None, 'none', 'auto' or a mask, not {foreground!r}")
        from diffad.synthesis.foreground import estimate_foreground

        return estimate_foreground(image)
    fg = torch.as_tensor(foreground, device=image.device)
    if fg.dim() == 2:
        fg = fg[None]
    if tuple(fg.shape) != (1, *image.shape[-2:]):
        raise DataError(
            f"foreground mask has shape {tuple(fg.shape)}; it must be (1, H, W) = "
            f"(1, {image.shape[-2]}, {image.shape[-1]}) like the image"
        )
    fg = fg > 0.5 if fg.is_floating_point() else fg.bool()
    if not fg.any():
        raise DataError("the foreground mask is empty: give a mask with some foreground, or foreground=None")
    return fg


def compose(image: torch.Tensor, fill: torch.Tensor, alpha: torch.Tensor, foreground: torch.Tensor | None):
    """Blend `fill` into `image` with opacity `alpha` (1,H,W); the mask is where alpha > 0."""
    alpha = alpha.clamp(0, 1)
    if foreground is not None:
        alpha = alpha * foreground
    support = alpha > 0
    blended = (image + alpha * (fill - image)).clamp(-1, 1)
    # torch.where, not the blend, outside the support: pixels there stay bit-identical.
    out = torch.where(support, blended, image)
    return out, support.to(image.dtype)


def changed(image: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> bool:
    return bool(mask.any()) and float((out - image).abs().amax()) >= MIN_CHANGE


def disk_alpha(shape, center, radius: float, device=None) -> torch.Tensor:
    """A filled circle with a one-pixel soft edge, (1,H,W)."""
    h, w = shape
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :] + 0.5
    dist = torch.sqrt((ys - center[0]) ** 2 + (xs - center[1]) ** 2)
    return (radius + 0.5 - dist).clamp(0, 1)[None]


def random_point(generator: torch.Generator, shape, foreground: torch.Tensor | None) -> tuple[float, float]:
    """A pixel centre drawn uniformly from the foreground (or the whole image)."""
    h, w = shape
    if foreground is None:
        return uniform(generator, 0, h), uniform(generator, 0, w)
    weights = foreground.reshape(-1).float().cpu()
    index = int(torch.multinomial(weights, 1, generator=_cpu(generator)).item())
    return index // w + 0.5, index % w + 0.5


def _cpu(generator: torch.Generator) -> torch.Generator:
    # torch.multinomial on a CPU tensor needs a CPU generator; derive one deterministically.
    if generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(randint(generator, 0, 2**62))


def fallback_spot(image: torch.Tensor, generator: torch.Generator, foreground: torch.Tensor | None):
    """A plain spot, pushed away from the local grey level: the last resort that always changes pixels."""
    h, w = image.shape[-2:]
    center = random_point(generator, (h, w), foreground)
    radius = max(1.5, 0.05 * min(h, w))
    alpha = disk_alpha((h, w), center, radius, device=image.device)
    level = image.mean()
    fill = image + (-0.6 if level > 0 else 0.6)
    out, mask = compose(image, fill, alpha, foreground)
    if not mask.any():  # a one-pixel foreground off the disk: paint that pixel
        mask = foreground.to(image.dtype)
        out = torch.where(foreground, fill.clamp(-1, 1), image)
    return out, mask, {"fallback": "spot", "center": [round(center[0], 2), round(center[1], 2)]}


def attempt(
    image: torch.Tensor,
    generator: torch.Generator,
    foreground: torch.Tensor | None,
    draw: Callable[[], tuple[torch.Tensor, torch.Tensor, dict]],
    tries: int = 8,
) -> SyntheticDefect:
    """Run `draw() -> (fill, alpha, params)` until the defect changes a pixel; then fall back to a spot."""
    for n in range(1, tries + 1):
        fill, alpha, params = draw()
        out, mask = compose(image, fill, alpha, foreground)
        if changed(image, out, mask):
            params["attempts"] = n
            return SyntheticDefect(out, mask, params)
    out, mask, params = fallback_spot(image, generator, foreground)
    params["attempts"] = tries + 1
    return SyntheticDefect(out, mask, params)


def batched(fn: Callable[..., SyntheticDefect]):
    """Let a generator of one (C,H,W) image take a batch (N,C,H,W), drawing each image in turn."""

    @functools.wraps(fn)
    def wrapper(image, generator=None, *args, foreground=None, **kwargs):
        generator = as_generator(generator)
        if isinstance(image, torch.Tensor) and image.dim() == 4:
            results = []
            for i, one in enumerate(image):
                fg = foreground
                if isinstance(fg, torch.Tensor) and fg.dim() == 4:
                    fg = fg[i]
                results.append(fn(one, generator, *args, foreground=fg, **kwargs))
            return SyntheticDefect(
                torch.stack([r.image for r in results]),
                torch.stack([r.mask for r in results]),
                [r.params for r in results],
            )
        return fn(check_image(image), generator, *args, foreground=foreground, **kwargs)

    return wrapper


def scale_px(size: int, pixels_at_256: float, minimum: float = 1.0) -> float:
    """Sizes in the literature are given for 256 px images; scale them to this image."""
    return max(minimum, pixels_at_256 * size / 256.0)


def rounded(value, digits: int = 4):
    """Floats in params, rounded so manifests stay short and stable."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value
