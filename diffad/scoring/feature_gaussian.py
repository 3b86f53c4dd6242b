"""The "feature_gaussian" residual: a PaDiM-style map inside the detection pipeline.

At calibration the pipeline fits, on good images, one Gaussian per feature-grid position over the
feature extractor's pooled maps (every stage 3x3 average-pooled, the coarser stages upsampled to the
finest stage's grid, concatenated, then projected to a few dimensions by a fixed seeded random matrix).
At detection each position's Mahalanobis distance to its Gaussian is the map: it needs no
reconstruction, and it sees what pretrained features see (DAGM's smooth patch in random texture,
which reconstruction residuals miss). The scorer keeps mean, precision and projection as buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffad.errors import ConfigError


def pooled_embedding(maps: list[torch.Tensor]) -> torch.Tensor:
    """(N, D, h, w): every map 3x3 average-pooled, upsampled to the first (finest) map's grid, stacked."""
    pooled = []
    for f in maps:
        mode = "reflect" if min(f.shape[-2:]) > 1 else "replicate"  # reflect needs 2+ cells
        pooled.append(F.avg_pool2d(F.pad(f.float(), (1, 1, 1, 1), mode=mode), 3, 1))
    grid = pooled[0].shape[-2:]
    upsampled = [F.interpolate(p, size=grid, mode="bilinear", align_corners=False) for p in pooled[1:]]
    return torch.cat([pooled[0], *upsampled], dim=1)


def projection_matrix(channels: int, dim: int, seed: int) -> torch.Tensor:
    """(channels, k) Gaussian matrix scaled by 1/sqrt(k), k = dim; the identity when dim is 0 or >= channels."""
    if dim <= 0 or dim >= channels:
        return torch.eye(channels)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(channels, dim, generator=generator) / dim**0.5


def project(embedding: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) -> (N, h*w, k)."""
    if embedding.shape[1] != projection.shape[0]:
        raise ConfigError(
            f"the feature extractor gives {embedding.shape[1]} channels but the scorer's Gaussians were fitted "
            f"on {projection.shape[0]}: calibrate the pipeline again with this extractor"
        )
    # float32 whatever the stored dtype (a folder saved in float16 keeps its statistics in float16).
    projection = projection.to(embedding.device, torch.float32)
    return torch.einsum("ndhw,dk->nhwk", embedding.float(), projection).flatten(1, 2)


class GaussianMoments:
    """Running per-position sums over good images, in float64 (E[zz^T] - mu mu^T loses precision in float32)."""

    def __init__(self):
        self.count, self.total, self.outer, self.grid = 0, None, None, None

    def add(self, z: torch.Tensor, grid: tuple[int, int]) -> None:
        """z: (N, P, k) projected embeddings."""
        if self.grid is not None and tuple(grid) != self.grid:
            raise ConfigError(f"feature grids differ between calibration batches: {grid} vs {self.grid}")
        self.grid = tuple(grid)
        z = z.double().cpu()
        total, outer = z.sum(0), torch.einsum("npi,npj->pij", z, z)
        self.total = total if self.total is None else self.total + total
        self.outer = outer if self.outer is None else self.outer + outer
        self.count += z.shape[0]

    def gaussians(self, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position mean (P, k) and precision (P, k, k) = inverse of (sample covariance + epsilon I)."""
        if self.count < 2:
            raise ConfigError(f"the feature Gaussians need at least 2 good images, got {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * mean[:, :, None] * mean[:, None, :]) / (self.count - 1)
        cov = cov + epsilon * torch.eye(cov.shape[-1], dtype=cov.dtype)
        # Cholesky rather than linalg.inv: batched inv fails with 2+ threads in torch 2.13's CPU build.
        precision = torch.cholesky_inverse(torch.linalg.cholesky(cov))
        return mean.float(), precision.float().contiguous()


def mahalanobis_map(
    embedding: torch.Tensor, projection: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor
) -> torch.Tensor:
    """(N, h, w) Mahalanobis distance of each position's projected feature to its Gaussian."""
    n, _, h, w = embedding.shape
    if mean.shape[0] != h * w:
        raise ConfigError(
            f"the scorer's feature Gaussians cover {mean.shape[0]} grid positions but the features have "
            f"{h}x{w}: calibrate the pipeline at its working resolution again"
        )
    delta = project(embedding, projection) - mean.to(embedding.device, torch.float32)
    dist = (torch.einsum("npi,pij->npj", delta, precision.to(embedding.device, torch.float32)) * delta).sum(
        -1
    )
    return dist.clamp_min(0).sqrt().view(n, h, w)
