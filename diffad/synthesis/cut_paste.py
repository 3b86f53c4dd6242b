"""CutPaste and CutPaste-scar (Li et al., CVPR 2021): a patch cut from the image, jittered, pasted elsewhere.

CutPaste cuts a rectangle of 2-15 % of the image area with aspect ratio in [0.3, 3.3]; the scar
variant cuts a thin strip (2-16 by 10-25 px at 256 px, scaled to the image) and rotates it by up to
45 degrees. Both jitter brightness, contrast and saturation by 10 % before pasting. The patch is
resampled through one affine map, so the plain rectangle is an exact pixel copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffad.synthesis.augment import color_jitter
from diffad.synthesis.common import (
    attempt,
    batched,
    random_point,
    resolve_foreground,
    rounded,
    scale_px,
    uniform,
)


def _paste(image, generator, foreground, width, height, angle, jitter):
    """Fill and alpha for a width x height patch, rotated by `angle`, moved to a random place."""
    _, h, w = image.shape
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # Half extents of the pasted (rotated) patch, so it lands inside the image.
    by = (abs(s) * width + abs(c) * height) / 2
    bx = (abs(c) * width + abs(s) * height) / 2
    src = (uniform(generator, height / 2, h - height / 2), uniform(generator, width / 2, w - width / 2))
    if foreground is not None:
        # Aim the patch at the object: its centre is a foreground pixel, pulled inside the image.
        py, px = random_point(generator, (h, w), foreground)
        dst = (min(max(py, by), h - by), min(max(px, bx), w - bx))
    else:
        dst = (uniform(generator, by, h - by), uniform(generator, bx, w - bx))
    if angle == 0:
        # Whole-pixel offsets keep the copied pixels exact.
        src = (math.floor(src[0] - height / 2) + height / 2, math.floor(src[1] - width / 2) + width / 2)
        dst = (math.floor(dst[0] - height / 2) + height / 2, math.floor(dst[1] - width / 2) + width / 2)
    patch_source = color_jitter(image, generator, jitter) if jitter > 0 else image

    ys = torch.arange(h, dtype=torch.float64, device=image.device)[:, None] + 0.5 - dst[0]
    xs = torch.arange(w, dtype=torch.float64, device=image.device)[None, :] + 0.5 - dst[1]
    # Patch coordinates of each output pixel: rotate back by -angle.
    u = c * xs + s * ys
    v = -s * xs + c * ys
    inside = (u.abs() <= width / 2) & (v.abs() <= height / 2)
    sy, sx = v + src[0], u + src[1]
    grid = torch.stack([sx / w * 2 - 1, sy / h * 2 - 1], dim=-1).float()[None]
    fill = F.grid_sample(
        patch_source[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    params = {
        "width": rounded(width, 2),
        "height": rounded(height, 2),
        "angle": rounded(angle, 2),
        "source": rounded(list(src), 2),
        "target": rounded(list(dst), 2),
        "jitter": jitter,
    }
    return fill, inside[None].to(image.dtype), params


@batched
def cutpaste(
    image: torch.Tensor,
    generator: torch.Generator | int | None = None,
    *,
    foreground=None,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: tuple[float, float] = (0.3, 3.3),
    jitter: float = 0.1,
):
    """CutPaste on `image` (C, H, W) or a batch in [-1, 1]; returns `SyntheticDefect(image, mask)`."""
    fg = resolve_foreground(image, foreground)
    _, h, w = image.shape

    def draw():
        area = uniform(generator, *area_ratio) * h * w
        log_lo, log_hi = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
        aspect = math.exp(uniform(generator, log_lo, log_hi))
        width = max(1, min(w - 1, round(math.sqrt(area * aspect))))
        height = max(1, min(h - 1, round(math.sqrt(area / aspect))))
        fill, alpha, params = _paste(image, generator, fg, width, height, 0.0, jitter)
        return fill, alpha, {"method": "cutpaste", **params}

    return attempt(image, generator, fg, draw)


@batched
def cutpaste_scar(
    image: torch.Tensor,
    generator: torch.Generator | int | None = None,
    *,
    foreground=None,
    width: tuple[float, float] = (2, 16),
    height: tuple[float, float] = (10, 25),
    rotation: tuple[float, float] = (-45, 45),
    jitter: float = 0.1,
):
    """CutPaste-scar: a thin rotated strip; `width` and `height` are in pixels at 256 px, scaled to the image."""
    fg = resolve_foreground(image, foreground)
    _, h, w = image.shape
    size = min(h, w)

    def draw():
        sw = min(size - 1, scale_px(size, uniform(generator, *width)))
        sh = min(size - 1, scale_px(size, uniform(generator, *height), minimum=2.0))
        angle = uniform(generator, *rotation)
        fill, alpha, params = _paste(image, generator, fg, sw, sh, angle, jitter)
        return fill, alpha, {"method": "cutpaste_scar", **params}

    return attempt(image, generator, fg, draw)
