"""Residual maps between an image and its reconstruction: pixel, structural (SSIM), latent, feature.

Each function returns one map per image, shape (N, H, W), where larger means "more different".
Images are (N, C, H, W) in [-1, 1]; latents and features may be smaller and are upsampled to `size`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffad.errors import ConfigError
from diffad.scoring.smoothing import gaussian_blur

PIXEL_NORMS = ("l1", "l2")


def pixel_residual(x: torch.Tensor, x_hat: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Mean absolute difference over channels ("l1") or root mean squared difference ("l2")."""
    diff = x - x_hat
    if norm == "l1":
        return diff.abs().mean(dim=1)
    if norm == "l2":
        return diff.pow(2).mean(dim=1).sqrt()
    raise ConfigError(f"pixel_norm must be one of {PIXEL_NORMS}, got {norm!r}")


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5, data_range: float = 2.0) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004: Gaussian window sigma 1.5, 11 taps, K1=0.01, K2=0.03) per channel.

    Matches `skimage.metrics.structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False, full=True)` away from the border (the border is padded by replication).
    """
    x = x.double()
    y = y.double()
    blur = lambda t: gaussian_blur(t, sigma, truncate=3.5)  # noqa: E731 - five uses below
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.float()


def ssim_residual(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """1 - SSIM, averaged over channels: 0 where the local structure is reproduced exactly."""
    return 1.0 - ssim_map(x, x_hat).mean(dim=1)


def latent_residual(z: torch.Tensor, z_hat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mean absolute latent difference over channels, bilinearly upsampled to the image size."""
    diff = (z - z_hat).abs().mean(dim=1, keepdim=True)
    return F.interpolate(diff.float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


def latent_cosine_residual(z: torch.Tensor, z_hat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1 - cosine similarity of each position's latent vector and its denoised one, upsampled to `size`."""
    dist = 1.0 - F.cosine_similarity(z.float(), z_hat.float(), dim=1, eps=1e-6)
    return F.interpolate(dist[:, None], size=size, mode="bilinear", align_corners=False).squeeze(1)


def feature_residual(
    features: list[torch.Tensor], features_hat: list[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """Sum over stages of 1 - cosine similarity between feature vectors, each stage upsampled to `size`.

    Cosine distance ignores the scale of each stage, so shallow and deep stages weigh alike.
    """
    total = None
    for f, g in zip(features, features_hat, strict=True):
        dist = 1.0 - F.cosine_similarity(f.float(), g.float(), dim=1, eps=1e-6)
        dist = F.interpolate(dist.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        total = dist if total is None else total + dist
    if total is None:
        raise ConfigError("the feature extractor returned no feature maps")
    return total
