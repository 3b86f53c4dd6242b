"""Separable Gaussian smoothing of maps and images in torch.

The kernel and the edge handling match `scipy.ndimage.gaussian_filter(..., mode="nearest")`, so the
result is independent of the image size (reflection would need the image to be wider than the kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, *, device=None, dtype=None) -> torch.Tensor:
    """The normalised 1-D kernel scipy uses: radius `int(truncate * sigma + 0.5)`."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype or torch.float32)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Blur the last two dimensions of `x` (shape (..., H, W)); sigma <= 0 returns `x` unchanged."""
    if sigma <= 0:
        return x
    kernel = gaussian_kernel1d(sigma, truncate, device=x.device, dtype=x.dtype)
    radius = kernel.numel() // 2
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    flat = F.pad(flat, (radius, radius, 0, 0), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.pad(flat, (0, 0, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(shape)


def average_pool(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over `size` x `size` windows, same output size (used before taking a map's maximum)."""
    if size <= 1:
        return maps
    left = (size - 1) // 2
    padded = F.pad(maps.unsqueeze(1), (left, size - 1 - left, left, size - 1 - left), mode="replicate")
    return F.avg_pool2d(padded, size, stride=1).squeeze(1)
