"""Drawn structural defects: scratches (thin smooth curves), spots and holes, cracks (jagged branching lines).

Curves are rendered as anti-aliased strokes from the distance of each pixel to the polyline, so
their mask is the exact support of the stroke. Sizes are given at 256 px and scaled to the image.
"""

from __future__ import annotations

import math

import torch

from diffad.synthesis.common import (
    attempt,
    batched,
    choice,
    randint,
    randn,
    random_point,
    resolve_foreground,
    rounded,
    scale_px,
    uniform,
)
from diffad.synthesis.perlin import fractal_noise


def stroke_alpha(
    points: torch.Tensor, widths: torch.Tensor, shape: tuple[int, int], device=None
) -> torch.Tensor:
    """Coverage (1, H, W) of a polyline `points` (K, 2) in (y, x) pixels with per-point `widths` (K,)."""
    h, w = shape
    alpha = torch.zeros((h, w), device=device)
    if len(points) < 2:
        return alpha[None]
    pad = float(widths.max()) / 2 + 2
    y0 = max(0, int(points[:, 0].min() - pad))
    y1 = min(h, int(points[:, 0].max() + pad) + 1)
    x0 = max(0, int(points[:, 1].min() - pad))
    x1 = min(w, int(points[:, 1].max() + pad) + 1)
    if y0 >= y1 or x0 >= x1:
        return alpha[None]
    ys = torch.arange(y0, y1, dtype=torch.float32) + 0.5
    xs = torch.arange(x0, x1, dtype=torch.float32) + 0.5
    q = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 1, 2)
    a, b = points[:-1].float()[None], points[1:].float()[None]
    wa, wb = widths[:-1].float()[None], widths[1:].float()[None]
    best = torch.full((q.shape[0],), float("inf"))
    # Segments in chunks, to bound memory on long curves over large boxes.
    for start in range(0, a.shape[1], 64):
        sa, sb = a[:, start : start + 64], b[:, start : start + 64]
        ab = sb - sa
        t = (((q - sa) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
        nearest = sa + t[..., None] * ab
        half = (wa[:, start : start + 64] + t * (wb[:, start : start + 64] - wa[:, start : start + 64])) / 2
        gap = (q - nearest).norm(dim=-1) - half
        best = torch.minimum(best, gap.amin(1))
    cover = (0.5 - best).clamp(0, 1).reshape(y1 - y0, x1 - x0)
    alpha[y0:y1, x0:x1] = cover.to(alpha.device)
    return alpha[None]


def _walk(generator, start, heading, length, step, turn_sd, drift=0.0, jagged=False):
    """A path of `length` px from `start`.

    Smooth (a scratch): the heading turns by N(drift, turn_sd) per step, smoothed, so it bends gently.
    Jagged (a crack): each step deviates by N(0, turn_sd) from a heading that itself wanders slowly,
    so the line zigzags but keeps its course, as cracks in brittle material do.
    """
    steps = max(2, int(length / step))
    turns = randn(generator, steps) * turn_sd + drift
    if jagged:
        angles = heading + torch.cumsum(randn(generator, steps) * 0.1, 0) + turns
    else:
        kernel = torch.ones(5) / 5
        turns = torch.nn.functional.conv1d(turns[None, None], kernel[None, None], padding=2)[0, 0]
        angles = heading + torch.cumsum(turns, 0)
    deltas = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1) * step
    start = torch.tensor(start, dtype=torch.float32)
    return torch.cat([start[None], start[None] + torch.cumsum(deltas, 0)], dim=0)


def _shade(image, generator, alpha, dark_only=False):
    """A fill that moves the image brighter or darker by a random amount."""
    sign = -1.0 if dark_only or randint(generator, 0, 2) else 1.0
    delta = uniform(generator, 0.35, 0.9)
    return (image + sign * delta).clamp(-1, 1), {"shade": rounded(sign * delta)}


@batched
def scratch(
    image: torch.Tensor,
    generator: torch.Generator | int | None = None,
    *,
    foreground=None,
    count: tuple[int, int] = (1, 3),
    length: tuple[float, float] = (0.15, 0.6),
    width: tuple[float, float] = (1.0, 3.0),
):
    """1-3 thin smooth curves, brighter or darker than the surface. `length` is a fraction of the image
    side, `width` pixels at 256 px. Returns `SyntheticDefect(image, mask)`."""
    fg = resolve_foreground(image, foreground)
    _, h, w = image.shape
    size = min(h, w)

    def draw():
        alpha = torch.zeros((1, h, w), device=image.device)
        n = randint(generator, count[0], count[1] + 1)
        for _ in range(n):
            start = random_point(generator, (h, w), fg)
            heading = uniform(generator, -math.pi, math.pi)
            curve = uniform(generator, -1, 1) * 4 / size  # gentle overall bend, in radians per px
            points = _walk(generator, start, heading, uniform(generator, *length) * size, 1.0, 0.04, curve)
            wd = scale_px(size, uniform(generator, *width), minimum=0.8)
            alpha = torch.maximum(
                alpha, stroke_alpha(points, torch.full((len(points),), wd), (h, w), image.device)
            )
        fill, params = _shade(image, generator, alpha)
        return fill, alpha, {"method": "scratch", "count": n, **params}

    return attempt(image, generator, fg, draw)


@batched
def crack(
    image: torch.Tensor,
    generator: torch.Generator | int | None = None,
    *,
    foreground=None,
    length: tuple[float, float] = (0.25, 0.7),
    width: tuple[float, float] = (1.5, 4.0),
    branches: tuple[int, int] = (0, 3),
):
    """A dark jagged line that thins towards its ends, with a few branches. Returns `SyntheticDefect`."""
    fg = resolve_foreground(image, foreground)
    _, h, w = image.shape
    size = min(h, w)

    def draw():
        start = random_point(generator, (h, w), fg)
        heading = uniform(generator, -math.pi, math.pi)
        step = max(1.0, 0.02 * size)
        main = _walk(generator, start, heading, uniform(generator, *length) * size, step, 0.45, jagged=True)
        w0 = scale_px(size, uniform(generator, *width), minimum=1.0)
        taper = torch.sin(torch.linspace(0.15, math.pi - 0.15, len(main))) * w0
        alpha = stroke_alpha(main, taper.clamp_min(0.6), (h, w), image.device)
        nb = randint(generator, branches[0], branches[1] + 1)
        for _ in range(nb):
            at = randint(generator, 1, len(main) - 1)
            direction = heading + choice(generator, (-1, 1)) * uniform(generator, 0.4, 1.1)
            blen = uniform(generator, 0.2, 0.5) * len(main) * step
            branch = _walk(generator, main[at].tolist(), direction, blen, step, 0.45, jagged=True)
            bw = torch.linspace(float(taper[at]) * 0.7, 0.6, len(branch))
            alpha = torch.maximum(alpha, stroke_alpha(branch, bw, (h, w), image.device))
        fill, params = _shade(image, generator, alpha, dark_only=True)
        return fill, alpha, {"method": "crack", "branches": nb, "width": rounded(w0), **params}

    return attempt(image, generator, fg, draw)


def _ellipse(shape, center, radii, angle, device=None):
    """Coverage of a rotated ellipse with a one-pixel soft edge, and its normalised radius map."""
    h, w = shape
    ys = torch.arange(h, dtype=torch.float32, device=device)[:, None] + 0.5 - center[0]
    xs = torch.arange(w, dtype=torch.float32, device=device)[None, :] + 0.5 - center[1]
    c, s = math.cos(angle), math.sin(angle)
    u, v = (c * xs + s * ys) / radii[1], (-s * xs + c * ys) / radii[0]
    r = torch.sqrt(u * u + v * v)
    # Distance to the edge in pixels, roughly: (r - 1) times the local radius.
    edge = (1 - r) * min(radii)
    return (edge + 0.5).clamp(0, 1)[None], r[None]


@batched
def spots(
    image: torch.Tensor,
    generator: torch.Generator | int | None = None,
    *,
    foreground=None,
    kind: str | None = None,
    count: tuple[int, int] = (1, 4),
    radius: tuple[float, float] = (0.02, 0.08),
):
    """Blotchy spots (stains) or holes (dark core, bright rim): `kind` "spot", "hole" or None (either).
    `radius` is a fraction of the image side. Returns `SyntheticDefect(image, mask)`."""
    fg = resolve_foreground(image, foreground)
    _, h, w = image.shape
    size = min(h, w)

    def draw():
        which = kind or choice(generator, ("spot", "hole"))
        n = randint(generator, count[0], count[1] + 1)
        alpha = torch.zeros((1, h, w), device=image.device)
        fill = image.clone()
        blotch = None
        if which == "spot":
            blotch = fractal_noise((h, w), (8, 8), generator=generator, octaves=3, device=image.device)
        for _ in range(n):
            center = random_point(generator, (h, w), fg)
            ry = max(1.5, uniform(generator, *radius) * size)
            rx = max(1.5, ry * uniform(generator, 0.5, 1.5))
            cover, r = _ellipse((h, w), center, (ry, rx), uniform(generator, 0, math.pi), image.device)
            if which == "spot":
                delta = uniform(generator, 0.3, 0.8) * (0.7 + 0.3 * blotch)
                sign = -1.0 if randint(generator, 0, 2) else 1.0
                local = (image + sign * delta).clamp(-1, 1)
            else:
                rim = ((r > 0.8) & (r < 1.0)).to(image.dtype)
                core = uniform(generator, -1.0, -0.7)
                local = torch.where(rim > 0, (image + 0.5).clamp(-1, 1), torch.full_like(image, core))
            fill = torch.where(cover > 0, local, fill)
            alpha = torch.maximum(alpha, cover)
        return fill, alpha, {"method": "spots", "kind": which, "count": n}

    return attempt(image, generator, fg, draw)
