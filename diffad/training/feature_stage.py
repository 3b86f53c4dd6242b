"""Stage 1 with a frozen pretrained first stage: fit a `FeatureEncoder`'s statistics on good images.

Nothing is trained. One pass of the backbone over the good training images gives their pooled
features; from them, in float64: each channel's mean and standard deviation, the principal components
of the standardised features (all positions pooled; `eigh`, signs fixed, so the same images give the
same bytes), then each grid position's mean and covariance of the components, whose inverse Cholesky
factor whitens that position. Seconds on a CPU, against most of a fit's budget for an autoencoder.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffad.errors import ConfigError, DataError

STD_FLOOR = 1e-2  # of the median channel's standard deviation
# The embeddings of the last fit in this process, for stage 2 of the same `diffad fit`: the backbone
# pass is most of a CPU fit's stage 1, and stage 2 would repeat it. Keyed by folder and images.
_EMBEDDINGS: dict[tuple, torch.Tensor] = {}


def _key(folder, samples) -> tuple:
    return (str(Path(folder).resolve()), tuple(str(s.image_path) for s in samples))


def stage_latents(encoder, folder, samples, images, *, mirrored: bool = False, batch_size: int = 32):
    """Stage 2's latents of `samples`: (V, N, k, g, g) whitened by all the good images' Gaussians, and,
    when the encoder has per-category Gaussians, the same whitened by each sample's category (else None).
    V = 2 with `mirrored` (each image and its mirror). `images()` makes the dataset when the embeddings
    stage 1 left in this process (`diffad fit`) cannot be used."""
    cached = None if mirrored else _EMBEDDINGS.get(_key(folder, samples))
    _EMBEDDINGS.clear()
    if cached is not None:
        views = [cached]
    else:
        loader = torch.utils.data.DataLoader(images(), batch_size=batch_size)
        views = [embed_images(encoder, loader, show_progress=True)]
        if mirrored:
            views.append(embed_images(encoder, ({"image": b["image"].flip(-1)} for b in loader)))
    device = encoder.channel_mean.device
    projected = [encoder.project(v.to(device)) for v in views]
    union = torch.stack([encoder.whiten(z).float().cpu() for z in projected])
    if not encoder.categories:
        return union, None
    names = [s.category for s in samples]
    return union, torch.stack([encoder.whiten(z, names).float().cpu() for z in projected])


@torch.no_grad()
def embed_images(encoder, images, batch_size: int = 16, show_progress: bool = False) -> torch.Tensor:
    """Pooled features (N, D, g, g) of `images` (a tensor (N, C, H, W) in [-1, 1], or a DataLoader /
    iterable of such batches or of dicts with "image")."""
    batches = images.split(batch_size) if torch.is_tensor(images) else images
    out = []
    for batch in tqdm(batches, desc="first stage: features", disable=not show_progress, leave=False):
        x = batch["image"] if isinstance(batch, dict) else batch
        out.append(encoder.embed(x).double().cpu())
    if not out:
        raise DataError("the feature first stage needs good images to fit its statistics; none were given")
    return torch.cat(out)


def fit_statistics(encoder, embeddings: torch.Tensor, labels: list[str] | None = None) -> None:
    """Set `encoder`'s statistics from good images' pooled features (N, D, g, g); with categories in the
    encoder, also each category's Gaussians, from the images whose `labels` (category names) name it."""
    n, d, h, w = embeddings.shape
    if n < 2:
        raise DataError(f"the feature first stage needs at least 2 good images, got {n}")
    if (h, w) != (encoder.config.grid,) * 2 or d != encoder.feature_channels:
        raise ConfigError(f"embeddings of shape {tuple(embeddings.shape)} do not fit this encoder")
    x = embeddings.double()
    flat = x.permute(0, 2, 3, 1).reshape(-1, d)
    # A floor relative to the typical channel: a dead channel is not blown up into noise.
    mean, std = flat.mean(0), flat.std(0)
    std = std.clamp_min(STD_FLOOR * float(std.median()) + 1e-12)
    standard = (flat - mean) / std
    k = int(encoder.config.latent_channels)
    _, vectors = torch.linalg.eigh(standard.T @ standard / len(standard))
    vectors = vectors.flip(-1)[:, :k]  # largest first
    signs = torch.sign(vectors[vectors.abs().argmax(0), torch.arange(k)])  # the largest entry positive
    components = vectors * signs
    z = (standard @ components).view(n, h * w, k)  # (N, P, k)
    position_mean, cov = _position_moments(z)
    encoder.set_statistics(mean, std, components, position_mean, _whitener(cov, encoder.config))
    if encoder.categories:
        if labels is None or len(labels) != n:
            raise ConfigError("a FeatureEncoder with categories needs the category of every image")
        groups = [[i for i, label in enumerate(labels) if label == name] for name in encoder.categories]
        for name, rows in zip(encoder.categories, groups):
            if len(rows) < 2:
                raise DataError(
                    f"category {name!r} needs at least 2 good images for its Gaussians, got {len(rows)}"
                )
        moments = [_position_moments(z[rows]) for rows in groups]
        # Each category's covariance may be shrunk towards the within-category covariance pooled over
        # all categories, as if `category_prior` images had shown the pooled one (a few hundred images
        # give a noisy 152-dimensional covariance). Off by default: on synthetic defects each category's
        # own did better (benchmarks/bench_unified.py).
        pooled = sum((len(rows) - 1) * c for rows, (_, c) in zip(groups, moments)) / (n - len(groups))
        prior = encoder.category_prior
        whiteners, intensities = [], []
        for rows, (m, c) in zip(groups, moments):
            if encoder.config.category_shrinkage == "auto":
                toward = shrinkage_intensity(z[rows] - m, c, pooled)
            else:
                toward = prior / (len(rows) + prior)
            intensities.append(round(float(toward), 4))
            whiteners.append(_whitener((1 - toward) * c + toward * pooled, encoder.config))
        encoder.set_category_statistics(torch.stack([m for m, _ in moments]), torch.stack(whiteners))
        encoder.register_to_config(category_intensities=intensities)


def shrinkage_intensity(centred: torch.Tensor, cov: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Schäfer and Strimmer's (2005) estimate of the best weight of `target` in a shrunk covariance,
    from one category's centred components (n, P, k) and covariance (P, k, k): the summed estimated
    variance of the covariance's entries over their summed squared distance to the target, in [0, 1],
    one weight for all positions. A few images in many dimensions give a noisy covariance and a
    weight near 1; many images a weight near 0."""
    n = len(centred)
    squares = centred**2
    # sum_k (x_ki x_kj - mean_ij)^2 = sum_k x_ki^2 x_kj^2 - n mean_ij^2, mean_ij = cov_ij (n - 1) / n
    spread = torch.einsum("npi,npj->pij", squares, squares) - n * (cov * (n - 1) / n) ** 2
    variance = (n / (n - 1) ** 3 * spread.clamp_min(0)).sum()
    distance = ((cov - target) ** 2).sum()
    return (variance / distance.clamp_min(1e-30)).clamp(0.0, 1.0)


def _position_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (P, k) and covariance (P, k, k) of each position of components z (N, P, k)."""
    position_mean = z.mean(0)
    centred = z - position_mean
    return position_mean, torch.einsum("npi,npj->pij", centred, centred) / (len(z) - 1)


def _whitener(cov: torch.Tensor, config) -> torch.Tensor:
    """The inverse Cholesky factor of each covariance plus epsilon I (the identity without whitening)."""
    positions, k, _ = cov.shape
    eye = torch.eye(k, dtype=cov.dtype)
    if config.whitening != "position":
        return eye.expand(positions, k, k).contiguous()
    # Cholesky: batched inverses fail with 2+ threads in torch 2.13's CPU build.
    chol = torch.linalg.cholesky(cov + float(config.epsilon) * eye)
    return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).contiguous()


def build_feature_encoder(
    variant: str,
    channels: int,
    resolution: int,
    grid: int,
    latent_channels: int = 0,
    categories: list[str] | None = None,
    category_prior: float = 0.0,
    category_shrinkage: str = "prior",
):
    """The ImageNet EfficientNet-Lite encoder of `variant` for `channels`-channel images at `resolution`
    (with `categories`: per-category Gaussians as well)."""
    from diffad.models.feature_encoder import FeatureEncoder

    if resolution % grid:
        raise ConfigError(f"--resolution {resolution} must be a multiple of --feature_grid {grid}")
    return FeatureEncoder.from_wheel(
        variant,
        in_channels=channels,
        sample_size=resolution,
        grid=grid,
        latent_channels=latent_channels,
        categories=categories,
        category_prior=category_prior,
        category_shrinkage=category_shrinkage,
    )


def run_feature_stage(
    output_dir: Path,
    data: str,
    category: str | None,
    *,
    variant: str,
    channels: int,
    resolution: int,
    grid: int,
    latent_channels: int = 0,
    batch_size: int = 16,
    class_conditional: bool = False,
    category_prior: float = 0.0,
    category_shrinkage: str = "prior",
) -> dict:
    """Fit the feature first stage on the good training images and save it to `output_dir` (atomically).
    `category` may name several categories ("a,b"; None: all of them); with `class_conditional` and
    several categories each also gets its own Gaussians (`FeatureEncoder.categories`)."""
    from diffad.training.checkpoints import write_final_atomic
    from diffad.training.data import good_training_samples, training_images

    started = time.monotonic()
    samples = good_training_samples(data, category)
    names = sorted({s.category for s in samples})
    conditional = names if class_conditional and len(names) > 1 else None
    encoder = build_feature_encoder(
        variant, channels, resolution, grid, latent_channels, conditional, category_prior, category_shrinkage
    )
    loader = torch.utils.data.DataLoader(
        training_images(samples, resolution, channels), batch_size=batch_size
    )
    embeddings = embed_images(encoder, loader, show_progress=True)
    fit_statistics(encoder, embeddings, [s.category for s in samples])
    _EMBEDDINGS.clear()
    _EMBEDDINGS[_key(output_dir, samples)] = embeddings.float()
    write_final_atomic(Path(output_dir), lambda tmp: encoder.save_pretrained(str(tmp)), marker="config.json")
    return {
        "stage": "features",
        "steps": 0,
        "images": len(samples),
        "seconds": round(time.monotonic() - started, 1),
        "latents": [int(encoder.config.latent_channels), grid, grid],
        "categories": names,
        "per_category_gaussians": bool(conditional),
    }
