"""PaDiM (Defard et al., 2020): a Gaussian per feature-grid position, fitted on good images; the anomaly
map is the Mahalanobis distance of each position's feature to its Gaussian."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from diffad.baselines.common import FeatureDetector, iter_batches
from diffad.errors import ConfigError, DataError


class PaDiM(FeatureDetector):
    """PaDiM on pooled EfficientNet-Lite features.

    Args:
        feature_extractor: an `EfficientNetLiteFeatures` (or any module with the same output).
        resolution: images are resized to this square size for the features.
        projection_dim: if > 0 and below the feature dimension, features are projected to this many
            dimensions by a fixed random Gaussian matrix (drawn from `seed`, or the generator given to
            `fit`), which makes each covariance smaller. 0 keeps all dimensions: on DAGM class 1 the full
            152 Lite0 dimensions beat each of three 100-dimensional projections, whose results vary with the seed.
        epsilon: added to each covariance's diagonal, so it is invertible with few training images.
        sigma: Gaussian smoothing (pixels at `resolution`) of the upsampled map.
        border_pad: pixels of mirrored border added before the backbone (0: none).
        score_border: pixels at each edge left out of the image score (the map keeps them).
        seed: seed of the projection when `fit` gets no generator.
    """

    def __init__(
        self,
        feature_extractor,
        resolution: int = 256,
        projection_dim: int = 0,
        epsilon: float = 0.01,
        sigma: float = 4.0,
        border_pad: int = 0,
        score_border: int = 0,
        seed: int = 0,
    ):
        super().__init__(
            feature_extractor,
            resolution=resolution,
            projection_dim=projection_dim,
            epsilon=epsilon,
            sigma=sigma,
            border_pad=border_pad,
            score_border=score_border,
            seed=seed,
        )
        self.projection = self.mean = self.precision = None  # projection None: all feature dimensions

    def _state(self) -> dict:
        if self.mean is None:
            return {}
        state = {"mean": self.mean, "precision": self.precision}
        return state if self.projection is None else {**state, "projection": self.projection}

    def _set_state(self, state: dict) -> None:
        self.projection, self.mean, self.precision = (
            state.get("projection"),
            state["mean"],
            state["precision"],
        )

    def _project(self, emb: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) -> (N, h*w, k)."""
        if self.projection is None:
            return emb.flatten(2).transpose(1, 2)
        return torch.einsum("ndhw,dk->nhwk", emb, self.projection).flatten(1, 2)

    @torch.no_grad()
    def fit(
        self, images, generator: torch.Generator | None = None, batch_size: int = 8, progress: bool = True
    ):
        """Fits the Gaussians on good images: a DataLoader or dataset of dicts with "image", or images."""
        if generator is None:
            generator = torch.Generator().manual_seed(self.config["seed"])
        count, total, outer = 0, None, None
        self.projection = None
        for batch in tqdm(
            iter_batches(images, self.config["resolution"], batch_size),
            desc="PaDiM fit",
            disable=not progress,
        ):
            emb = self.embed(batch)
            k = self.config["projection_dim"]
            if count == 0 and 0 < k < emb.shape[1]:
                self.projection = (torch.randn(emb.shape[1], k, generator=generator) / k**0.5).to(emb.device)
            # Sums in float64 so that the covariance (E[xx^T] - mu mu^T) keeps its precision.
            z = self._project(emb).double()  # (N, P, k)
            total = z.sum(0) if total is None else total + z.sum(0)
            batch_outer = torch.einsum("npi,npj->pij", z, z)
            outer = batch_outer if outer is None else outer + batch_outer
            count += z.shape[0]
        if count < 2:
            raise DataError(f"PaDiM needs at least 2 good training images, got {count}")
        mean = total / count
        cov = (outer - count * mean[:, :, None] * mean[:, None, :]) / (count - 1)
        cov += self.config["epsilon"] * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        self.mean = mean.float()
        # Cholesky, not torch.linalg.inv: batched inv fails with 2+ threads in torch 2.13's CPU build
        # (MKL "DLASWP" errors, then "Pivots given to lu_solve..."); the covariance is SPD anyway.
        self.precision = torch.cholesky_inverse(torch.linalg.cholesky(cov)).float().contiguous()
        return self

    def _patch_scores(self, emb: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            raise ConfigError("this PaDiM is not fitted: call fit() on good images first")
        n, _, h, w = emb.shape
        delta = self._project(emb) - self.mean  # (N, P, k)
        dist = (torch.einsum("npi,pij->npj", delta, self.precision) * delta).sum(-1)
        return dist.clamp_min(0).sqrt().view(n, h, w)
