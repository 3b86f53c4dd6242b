"""Batched octave simplex noise that can stand in for Gaussian noise in a DDPM (as in AnoDDPM)."""

import math

import torch

from diffad.errors import ConfigError
from diffad.noise.opensimplex import GRADIENTS2, STRETCH2, lattice2

NOISE_KINDS = ("simplex", "gaussian")
# Points per lattice2 call: enough to hide the per-operation overhead, few enough to stay in cache.
_CHUNK_POINTS = 1 << 15
# Vertex keys are computed in float32, exact below 2**24: a chunk's gradient tables stay under it.
_MAX_KEYS = 1 << 24


def _window(cells_x: float, cells_y: float) -> tuple[int, int]:
    """First lattice row and number of rows covering stretched coordinates of points in
    [0, cells_x + 1) x [0, cells_y + 1), with the vertices up to 1 before and 2 after each cell."""
    low = math.floor(STRETCH2 * (cells_y + 1)) - 1
    high = math.floor((cells_x + 1) * (1 + STRETCH2)) + 3
    return low - 1, high - low + 2  # one row of margin each side against rounding


def simplex_noise(
    shape,
    *,
    generator: torch.Generator | None = None,
    octaves: int = 6,
    persistence: float = 0.8,
    frequency: float = 4.0,
    device=None,
    dtype=None,
) -> torch.Tensor:
    """Octave OpenSimplex noise of shape (B, C, H, W), standardised per sample and channel.

    Octave k has `frequency * 2**k` lattice cells across the longer image side and amplitude
    `persistence**k`; the sum is rescaled to zero mean and unit variance over (H, W) for every
    (sample, channel), so it can replace Gaussian noise in a DDPM without changing the schedule.

    `frequency` counts cells per image side, so the noise looks the same relative to the image at
    any resolution (a 256 px image or its 64 px latent). AnoDDPM's setting, `2**-6` cells per pixel
    at 256 px with 6 octaves and persistence 0.8, is the default `frequency=4.0`.

    Each field is OpenSimplex's lattice (`opensimplex.noise2`'s vertices, kernel and gradient set)
    with its own gradient for every vertex, drawn at random instead of hashed from a 256-entry
    permutation, and a random sub-cell offset per octave: fields are independent of each other and
    of the octaves above and below. All draws come from `generator`, so a seed gives the same tensor.

    Args:
        shape: (B, C, H, W).
        generator: torch.Generator for every random draw (None: torch's default generator).
        device, dtype: of the result (default: the generator's device, float32). The noise is made
            in float32 (float64 when that is asked for) and cast.
    """
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"simplex_noise needs a (B, C, H, W) shape, got {tuple(shape)}")
    if octaves < 1 or frequency <= 0:
        raise ConfigError(f"simplex_noise needs octaves >= 1 and frequency > 0, got {octaves}, {frequency}")
    batch, channels, height, width = (int(s) for s in shape)
    dtype = dtype or torch.float32
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    draw_device = generator.device if generator is not None else device  # a seed means the same on any device
    fields = batch * channels
    points_chunk = max(1, _CHUNK_POINTS // (height * width))
    grads = torch.tensor(GRADIENTS2, dtype=work, device=device)

    noise = torch.zeros((fields, height, width), device=device, dtype=work)
    for octave in range(octaves):
        scale = frequency * 2**octave / max(height, width)
        x0, rows = _window((width - 1) * scale, (height - 1) * scale)
        y0, cols = _window((height - 1) * scale, (width - 1) * scale)
        table = rows * cols
        if table > _MAX_KEYS:
            raise ConfigError(
                f"simplex_noise: {frequency * 2 ** (octaves - 1):g} cells across the image in the last "
                "octave is too fine to tabulate; lower frequency or octaves"
            )
        chunk = max(1, min(points_chunk, _MAX_KEYS // table))
        offsets = torch.rand((2, fields, 1, 1), generator=generator, device=draw_device, dtype=torch.float64)
        picks = torch.randint(8, (fields * table,), generator=generator, device=draw_device)
        offsets, picks = offsets.to(device=device, dtype=work), picks.to(device)
        grad_x, grad_y = grads[:, 0].index_select(0, picks), grads[:, 1].index_select(0, picks)
        x = torch.arange(width, device=device, dtype=work).view(1, 1, width) * scale + offsets[0]
        y = torch.arange(height, device=device, dtype=work).view(1, height, 1) * scale + offsets[1]
        amplitude = persistence**octave
        for start in range(0, fields, chunk):
            stop = min(fields, start + chunk)
            # Vertex (i, j) of field f is entry (f - start) * table + (i - x0) * cols + (j - y0).
            key_base = (
                torch.arange(stop - start, device=device, dtype=work) * table - (x0 * cols + y0)
            ).view(-1, 1, 1)
            part = lattice2(
                x[start:stop], y[start:stop], grad_x[start * table : stop * table], grad_y[start * table : stop * table],
                key_base, cols,
            )  # fmt: skip
            noise[start:stop].add_(part, alpha=amplitude)

    noise = noise.view(batch, channels, height * width)
    mean = noise.mean(dim=-1, keepdim=True)
    std = noise.std(dim=-1, keepdim=True, unbiased=False).clamp_min(1e-12)
    return ((noise - mean) / std).view(batch, channels, height, width).to(dtype)


def sample_noise(
    kind: str, shape, *, generator: torch.Generator | None = None, device=None, dtype=None, **kwargs
) -> torch.Tensor:
    """Unit-variance noise of `shape`: "simplex" (see `simplex_noise`, which takes `kwargs`) or "gaussian"."""
    if kind == "simplex":
        return simplex_noise(shape, generator=generator, device=device, dtype=dtype, **kwargs)
    if kind == "gaussian":
        if kwargs:
            raise ConfigError(f"gaussian noise takes no options, got {sorted(kwargs)}")
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        draw_device = generator.device if generator is not None else device
        noise = torch.randn(
            tuple(shape), generator=generator, device=draw_device, dtype=dtype or torch.float32
        )
        return noise.to(device)
    raise ConfigError(f"unknown noise kind {kind!r}: use one of {', '.join(NOISE_KINDS)}")
