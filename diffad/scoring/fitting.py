"""What a detection pipeline is fitted with, outside the pipeline (pipelines detect; they do not train).

- `fit_feature_gaussian`: PaDiM's per-position Gaussians on the pipeline's feature extractor;
- `fit_feature_head`: the feature head, trained on synthetic defects;
- `calibrate`: the residuals' statistics over good images (z-scores), after fitting those two.

Each takes the pipeline and good images, stores what it fitted in the pipeline's scorer and returns
the pipeline; `AnomalyDetectionPipeline.calibrate` and `diffad fit` call them.
"""

from __future__ import annotations

import torch

from diffad.errors import ConfigError
from diffad.scoring import feature_gaussian as fg
from diffad.scoring import feature_head as fh
from diffad.scoring.images import to_tensor_list
from diffad.scoring.scorer import CALIBRATIONS, check_choice


def progress(pipe, iterable=None, total=None, desc=None):
    """A tqdm bar with a description, honouring the pipeline's `set_progress_bar_config`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, **{"desc": desc, **getattr(pipe, "_progress_bar_config", {})})


def embedding_batches(pipe, images: list[torch.Tensor], batch_size: int):
    """The fitted maps' embedding of each batch of `images`, (n, D, h, w)."""
    for _, batch in pipe._batches(images, batch_size):  # its bar counts the batches
        yield pipe._embedding(pipe._working_size(batch, pipe.scorer.feature_gaussian_resolution))


@torch.no_grad()
def embeddings(pipe, images: list[torch.Tensor], batch_size: int = 8) -> torch.Tensor:
    return torch.cat([e.float().cpu() for e in embedding_batches(pipe, images, batch_size)])


@torch.no_grad()
def fit_feature_gaussian(pipe, good_images, batch_size: int = 8, embedded: torch.Tensor | None = None):
    """Fit the scorer's per-position feature Gaussians (the "feature_gaussian" map) on good images
    (or on their embeddings `embedded`, (N, D, h, w) from `embeddings`, when already computed)."""
    if pipe.feature_extractor is None:
        raise ConfigError("the feature_gaussian residual needs a feature_extractor in the pipeline")
    config = pipe.scorer.config
    moments, projection = fg.GaussianMoments(), None
    if embedded is None:
        batches = embedding_batches(pipe, to_tensor_list(good_images, pipe.image_channels), batch_size)
    else:
        batches = embedded.split(batch_size)
    for embedding in batches:
        if projection is None:
            projection = fg.projection_matrix(
                embedding.shape[1], int(config.feature_gaussian_dim), int(config.feature_gaussian_seed)
            )
        moments.add(fg.project(embedding, projection), embedding.shape[-2:])
    mean, precision = moments.gaussians(float(config.feature_gaussian_epsilon))
    pipe.scorer.set_feature_gaussian(projection, mean, precision, moments.grid)
    return pipe


def fit_feature_head(
    pipe,
    good_images,
    seed: int = 0,
    defects_per_image: int = 3,
    steps: int = 300,
    batch_size: int = 8,
    train_batch_size: int = 32,
    embedded: torch.Tensor | None = None,
):
    """Train the scorer's feature head (the "feature_head" map) on good images and `defects_per_image`
    synthetic defects made on each (a fresh one each time), for `steps` batches of `train_batch_size`.
    `embedded`: the good images' embeddings, when already computed. The same seed gives the same head."""
    from diffad.synthesis.methods import synthesize

    if pipe.feature_extractor is None:
        raise ConfigError("the feature_head residual needs a feature_extractor in the pipeline")
    if defects_per_image < 1 or steps < 1 or train_batch_size < 1:
        raise ConfigError("defects_per_image, steps and train_batch_size must be at least 1")
    images = to_tensor_list(good_images, pipe.image_channels)
    good = embeddings(pipe, images, batch_size) if embedded is None else embedded
    mean, std = fh.position_statistics(good)
    defects, masks = [], []
    for k in progress(pipe, range(defects_per_image * len(images)), desc="feature head: synthetic defects"):
        generator = torch.Generator().manual_seed((seed * 1_000_003 + k) % 2**63)
        defect = synthesize(images[k % len(images)], fh.SYNTHESIS_METHOD, generator)
        defects.append(defect.image)
        masks.append(defect.mask.reshape(defect.image.shape[-2:]))
    defective = embeddings(pipe, defects, batch_size)
    grid = tuple(good.shape[-2:])
    # float16 halves the memory of a few thousand embeddings; standardised values need no more.
    inputs = ((torch.cat([good, defective]) - mean) / std).half()
    targets = torch.cat([torch.zeros(len(good), 1, *grid), fh.defect_targets(torch.stack(masks), grid)])
    head = fh.make_head(int(mean.shape[0]), int(pipe.scorer.config.feature_head_hidden))
    with torch.enable_grad(), progress(pipe, total=steps, desc="feature head: training") as bar:
        fh.train_head(
            head,
            inputs,
            targets,
            steps=steps,
            batch_size=train_batch_size,
            generator=torch.Generator().manual_seed(seed),
            progress=bar,
        )
    pipe.scorer.set_feature_head(head.to(pipe.unet.dtype), mean, std)
    return pipe


@torch.no_grad()
def calibrate(
    pipe,
    good_images,
    generator: torch.Generator | list[torch.Generator] | None = None,
    mode: str = "per_pixel",
    batch_size: int = 8,
    gaussian_images=None,
    feature_head_steps: int = 300,
):
    """See `AnomalyDetectionPipeline.calibrate`."""
    check_choice("calibration mode", mode, CALIBRATIONS)
    fit_images = good_images if gaussian_images is None else gaussian_images
    features = pipe.feature_extractor is not None
    gaussians = features and pipe.scorer.weight("feature_gaussian") > 0
    head = features and pipe.scorer.weight("feature_head") > 0
    if gaussian_images is None:
        # Statistics taken on the images just fitted are far too small: recalibrating the shipped
        # model on 8 cells refitted its Gaussians on them and every later score became ~1e6.
        gaussians = gaussians and not pipe.scorer.has_feature_gaussian
        head = head and not pipe.scorer.has_feature_head
    embedded = None
    if gaussians and head:  # both fit on the same images: extract their features once
        embedded = embeddings(pipe, to_tensor_list(fit_images, pipe.image_channels), batch_size)
    if gaussians:
        fit_feature_gaussian(pipe, fit_images, batch_size, embedded=embedded)
    if head:
        seed = generator.initial_seed() % 2**31 if isinstance(generator, torch.Generator) else 0
        fit_feature_head(
            pipe, fit_images, seed=seed, steps=feature_head_steps, batch_size=batch_size, embedded=embedded
        )
    if mode == "none":
        pipe.scorer.set_calibration("none", {})
        return pipe
    moments: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
    for batch in pipe.residual_batches(good_images, generator, batch_size):
        for name, residual in batch.items():
            residual = residual.double().cpu()
            count, total, total_sq = moments.get(name, (0, 0.0, 0.0))
            moments[name] = (count + len(residual), total + residual.sum(0), total_sq + (residual**2).sum(0))
    pipe.scorer.set_calibration(mode, moments)
    return pipe
