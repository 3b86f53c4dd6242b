"""PatchCore (Roth et al., 2022): a memory bank of good patch features, thinned by greedy coreset
subsampling; a patch's anomaly score is the distance to its nearest neighbour in the bank."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from diffad.baselines.common import FeatureDetector, chunked_min_distance, iter_batches
from diffad.errors import ConfigError, DataError


@torch.no_grad()
def greedy_coreset(
    features: torch.Tensor,
    size: int,
    projection_dim: int = 32,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Indices of `size` rows chosen by farthest-point sampling (each new row is the one farthest from
    the rows chosen so far). As in the paper, distances are computed after a random Gaussian projection
    to `projection_dim` dimensions (Johnson-Lindenstrauss), which makes each step cheaper."""
    n, dim = features.shape
    size = min(size, n)
    z = features.float()
    if projection_dim and projection_dim < dim:
        z = z @ (torch.randn(dim, projection_dim, generator=generator) / projection_dim**0.5).to(z.device)
    norms = (z * z).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = first
    # Squared distance to the nearest chosen row, via |a|^2 - 2ab + |b|^2: one matrix-vector per step,
    # in place (allocating per step made it several times slower).
    nearest = torch.full_like(norms, float("inf"))
    dist = torch.empty_like(norms)
    best = first
    for step in tqdm(range(1, size), desc="coreset", disable=not progress):
        torch.addmv(norms, z, z[best], alpha=-2, out=dist)
        dist += norms[best]
        torch.minimum(nearest, dist, out=nearest)
        best = int(nearest.argmax())
        chosen[step] = best
    return chosen


class PatchCore(FeatureDetector):
    """PatchCore on pooled EfficientNet-Lite features.

    Args:
        feature_extractor: an `EfficientNetLiteFeatures`.
        resolution: images are resized to this square size for the features.
        coreset_ratio: fraction of all training patches kept in the memory bank (1.0: all).
        max_bank_size: cap on the bank size (0: no cap).
        projection_dim: dimensions of the random projection used while choosing the coreset (the paper
            uses 128; 32 chooses the coreset 6x faster on a CPU).
        calibration_fraction: this fraction of the good training images (seeded choice, at least one)
            stays out of the memory bank; their mean nearest-neighbour distance at each grid position
            divides the map. A position-blind bank otherwise scores good images high near the borders
            (and everywhere the backbone's view depends on position); 0 turns calibration off.
        sigma: Gaussian smoothing (pixels at `resolution`) of the upsampled map.
        border_pad: pixels of mirrored border added before the backbone (0: none). It lowers, but does
            not remove, the excess distance near the borders; calibration removes it.
        score_border: pixels at each edge left out of the image score (the map keeps them).
        reweight: the paper's image-score reweighting by the density of the nearest bank neighbour.
        num_neighbors: neighbourhood size of that reweighting.
        seed: seed of the coreset when `fit` gets no generator.
    """

    def __init__(
        self,
        feature_extractor,
        resolution: int = 256,
        coreset_ratio: float = 0.01,
        max_bank_size: int = 0,
        projection_dim: int = 32,
        calibration_fraction: float = 0.1,
        sigma: float = 4.0,
        border_pad: int = 0,
        score_border: int = 0,
        reweight: bool = False,
        num_neighbors: int = 9,
        seed: int = 0,
    ):
        if not 0 < coreset_ratio <= 1:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if not 0 <= calibration_fraction < 1:
            raise ConfigError(f"calibration_fraction must be in [0, 1), got {calibration_fraction}")
        super().__init__(
            feature_extractor,
            resolution=resolution,
            coreset_ratio=coreset_ratio,
            max_bank_size=max_bank_size,
            projection_dim=projection_dim,
            calibration_fraction=calibration_fraction,
            sigma=sigma,
            border_pad=border_pad,
            score_border=score_border,
            reweight=reweight,
            num_neighbors=num_neighbors,
            seed=seed,
        )
        self.memory_bank = self.position_scale = None

    def _state(self) -> dict:
        state = {} if self.memory_bank is None else {"memory_bank": self.memory_bank}
        return state if self.position_scale is None else {**state, "position_scale": self.position_scale}

    def _set_state(self, state: dict) -> None:
        self.memory_bank, self.position_scale = state["memory_bank"], state.get("position_scale")

    @torch.no_grad()
    def fit(
        self, images, generator: torch.Generator | None = None, batch_size: int = 8, progress: bool = True
    ):
        """Collects the patch features of good images, keeps a greedy coreset of them, and calibrates
        each grid position on the held-out images."""
        if generator is None:
            generator = torch.Generator().manual_seed(self.config["seed"])
        batches = iter_batches(images, self.config["resolution"], batch_size)
        embeddings = [self.embed(b) for b in tqdm(batches, desc="PatchCore features", disable=not progress)]
        if not embeddings:
            raise DataError("PatchCore needs good training images, got none")
        embeddings = torch.cat(embeddings)
        order = torch.randperm(len(embeddings), generator=generator).to(embeddings.device)
        held = round(len(embeddings) * self.config["calibration_fraction"])
        held = min(max(held, 1), len(embeddings) - 1) if self.config["calibration_fraction"] > 0 else 0
        if self.config["calibration_fraction"] > 0 and held == 0:
            raise DataError(
                "PatchCore calibration needs at least 2 good training images; set calibration_fraction=0"
            )
        calibration, bank_images = embeddings[order[:held]], embeddings[order[held:]]
        patches = bank_images.permute(0, 2, 3, 1).flatten(0, 2)
        size = max(1, round(len(patches) * self.config["coreset_ratio"]))
        if self.config["max_bank_size"]:
            size = min(size, self.config["max_bank_size"])
        if size < len(patches):
            keep = greedy_coreset(patches, size, self.config["projection_dim"], generator, progress)
            patches = patches[keep.to(patches.device)]
        self.memory_bank, self.position_scale = patches.contiguous(), None
        if held:
            distances = self._patch_scores(calibration)  # (held, h, w), uncalibrated while scale is None
            self.position_scale = distances.mean(0).clamp_min(1e-6)
        return self

    def _patch_scores(self, emb: torch.Tensor) -> torch.Tensor:
        if self.memory_bank is None:
            raise ConfigError("this PatchCore is not fitted: call fit() on good images first")
        n, d, h, w = emb.shape
        scale = torch.ones(h, w, device=emb.device) if self.position_scale is None else self.position_scale
        if scale.shape != (h, w):
            raise ConfigError(
                f"feature grid {(h, w)} differs from the calibrated {tuple(scale.shape)}; use the fitted resolution"
            )
        queries = emb.permute(0, 2, 3, 1).reshape(-1, d)
        dist, nearest = chunked_min_distance(queries, self.memory_bank)
        scores = dist.view(n, h * w)
        if self.config["reweight"]:
            ranking = scores / scale.flatten()
            scores = (
                scores
                * self._reweighting(queries.view(n, h * w, d), scores, ranking, nearest.view(n, h * w))[
                    :, None
                ]
            )
        return scores.view(n, h, w) / scale

    def _reweighting(self, queries, distances, ranking, nearest) -> torch.Tensor:
        """Paper eq. 7: w = 1 - softmax weight of the nearest bank feature m* among m*'s own `b` nearest
        bank neighbours, seen from the most anomalous patch; a rare m* (far neighbours) keeps w high."""
        weights = []
        b = min(self.config["num_neighbors"], len(self.memory_bank))
        for q, s, rank, idx in zip(queries, distances, ranking, nearest):
            top = int(rank.argmax())
            star = self.memory_bank[idx[top]]
            neighbours = torch.cdist(star[None], self.memory_bank)[0].topk(b, largest=False).indices
            dists = torch.cdist(q[top][None], self.memory_bank[neighbours])[0]
            # m* is among its own neighbours; logsumexp keeps large distances from overflowing exp.
            weights.append(1 - torch.exp(s[top] - torch.logsumexp(dists, 0)))
        return torch.stack(weights)
