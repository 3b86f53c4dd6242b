"""Batched octave simplex noise that can stand in for Gaussian noise in a DDPM (as in AnoDDPM)."""

import torch

from diffad.errors import ConfigError
from diffad.noise.opensimplex import GRADIENTS2, noise2_lattice

NOISE_KINDS = ("simplex", "gaussian")


def _gradient_tables(perms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per field, the 2D gradient of every lattice vertex modulo 256: shape (F * 65536, 2).

    `opensimplex` hashes a vertex (x, y) to `perm[(perm[x & 255] + y) & 255] & 0x0E`; tabulating that
    once per field turns the two dependent lookups per vertex into one.
    """
    fields = perms.shape[0]
    arange = torch.arange(256, device=perms.device)
    inner = (perms[:, :, None] + arange) & 0xFF
    hashed = torch.gather(perms, 1, inner.reshape(fields, -1))
    grads = torch.tensor(GRADIENTS2, dtype=dtype, device=perms.device)
    return grads[(hashed & 0x0E) >> 1].reshape(-1, 2)


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

    Every (sample, channel) field gets its own random permutation table and, per octave, its own
    random offset, all drawn from `generator`, so that fields are independent and the same seed gives
    the same tensor. Octave k has `frequency * 2**k` lattice cells across the longer image side and
    amplitude `persistence**k`; the sum is then rescaled to zero mean and unit variance over (H, W),
    so the noise can replace Gaussian noise in a DDPM without changing the schedule.

    `frequency` is in cells per image side, so the noise looks the same relative to the image at any
    resolution (a 256 px image or its 64 px latent). AnoDDPM's setting (`2**-6` cells per pixel at
    256 px, 6 octaves, persistence 0.8) is the default `frequency=4.0`.

    Args:
        shape: (B, C, H, W).
        generator: torch.Generator for every random draw (None: torch's default generator).
        device, dtype: of the result (default: the generator's device, float32).
    """
    if len(shape) != 4:
        raise ConfigError(f"simplex_noise needs a (B, C, H, W) shape, got {tuple(shape)}")
    if octaves < 1 or frequency <= 0:
        raise ConfigError(f"simplex_noise needs octaves >= 1 and frequency > 0, got {octaves}, {frequency}")
    batch, channels, height, width = (int(s) for s in shape)
    dtype = dtype or torch.float32
    device = torch.device(device) if device is not None else (generator.device if generator else None)
    device = device or torch.device("cpu")
    # float32 is plenty for noise that only has to look right; float64 only when asked for.
    work = torch.float64 if dtype == torch.float64 else torch.float32
    fields = batch * channels

    # Draw on the generator's device so a seed gives the same fields on every device.
    draw_device = generator.device if generator is not None else device
    keys = torch.rand((fields, 256), generator=generator, device=draw_device)
    offsets = torch.rand((2, octaves, fields, 1, 1), generator=generator, device=draw_device)
    perms = torch.argsort(keys, dim=1).to(device)
    offsets = (offsets.to(device=device, dtype=work) * 256).unbind(0)  # the hash repeats every 256 cells
    table = _gradient_tables(perms, work)
    field_base = (torch.arange(fields, device=device) * 65536).view(fields, 1, 1)

    def gradient_of(xv, yv):
        key = field_base + ((xv.long() & 0xFF) << 8) + (yv.long() & 0xFF)
        g = table[key]
        return g[..., 0], g[..., 1]

    cols = torch.arange(width, device=device, dtype=work).view(1, 1, width)
    rows = torch.arange(height, device=device, dtype=work).view(1, height, 1)
    noise = torch.zeros((fields, height, width), device=device, dtype=work)
    for octave in range(octaves):
        scale = frequency * 2**octave / max(height, width)
        x = cols * scale + offsets[0][octave]
        y = rows * scale + offsets[1][octave]
        noise += persistence**octave * noise2_lattice(x, y, gradient_of)

    noise = noise.view(batch, channels, height * width)
    mean = noise.mean(dim=-1, keepdim=True)
    std = noise.std(dim=-1, keepdim=True, unbiased=False).clamp_min(1e-12)
    noise = (noise - mean) / std
    return noise.view(batch, channels, height, width).to(dtype)


def sample_noise(
    kind: str, shape, *, generator: torch.Generator | None = None, device=None, dtype=None, **kwargs
) -> torch.Tensor:
    """Unit-variance noise of `shape`: "simplex" (see `simplex_noise`, which takes `kwargs`) or "gaussian"."""
    if kind == "simplex":
        return simplex_noise(shape, generator=generator, device=device, dtype=dtype, **kwargs)
    if kind == "gaussian":
        if kwargs:
            raise ConfigError(f"gaussian noise takes no options, got {sorted(kwargs)}")
        device = torch.device(device) if device is not None else (generator.device if generator else None)
        draw_device = generator.device if generator is not None else device
        noise = torch.randn(
            tuple(shape), generator=generator, device=draw_device, dtype=dtype or torch.float32
        )
        return noise.to(device) if device is not None else noise
    raise ConfigError(f"unknown noise kind {kind!r}: use one of {', '.join(NOISE_KINDS)}")


__all__ = ["NOISE_KINDS", "sample_noise", "simplex_noise"]
