"""After training: record the scorer's calibration statistics on good images, inside the pipeline folder.

Uncalibrated, the residual maps (pixel L1, 1 - SSIM, latent) are summed on their own scales;
calibrated, each is a z-score against good images first. `diffad fit` calibrates on a seeded
subset of the good training images (the pipeline's `calibrate`), then rewrites the folder atomically.

With `features="lite0"` it first attaches ImageNet EfficientNet-Lite0 features (stride 8 and 16) as the
pipeline's feature extractor and sets `FEATURE_SETTINGS`: the calibration then also fits the per-position
feature Gaussians ("feature_gaussian", PaDiM inside the pipeline), and, when asked (feature_head_weight
above 0), trains the feature head on synthetic defects ("feature_head"), on the good training images that
the residual statistics do not use, so that those statistics are those of unseen good images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffad.training.checkpoints import write_final_atomic, write_json_atomic
from diffad.training.data import good_training_samples, load_images
from diffad.training.order import generator_for
from diffad.training.pipeline_folder import PIPELINE_MARKER

FEATURE_VARIANTS = ("lite0", "lite1", "lite2")
# Scorer settings that come with the features. On DAGM class 1 (fit at 128 px) the Gaussians on the
# features of 256 px inputs reached image AUROC 0.81 / AUPRO 0.74 alone, those of the 128 px working
# images 0.58 / 0.27; the reconstruction feature residual stayed at chance (0.49-0.56), so it is off.
FEATURE_SETTINGS = {"feature_gaussian_weight": 1.0, "feature_weight": 0.0, "feature_gaussian_resolution": 256}
SELECTION_FILE = "selection.json"
MIN_SELECT_IMAGES = 4  # fewer good and defective images than this choose nothing reliably
MAX_GAUSSIAN_IMAGES = 400  # the feature Gaussians' images (PaDiM's covariances want many)


def attach_features(pipe, variant: str = "lite0", settings: dict | None = None):
    """Give `pipe` ImageNet EfficientNet-Lite features (the stride-8 and stride-16 stages only) and a
    scorer with `settings` (default `FEATURE_SETTINGS`) over its own; calibrate it afterwards."""
    from diffad.models.efficientnet import EfficientNetLiteFeatures

    pipe.register_modules(feature_extractor=EfficientNetLiteFeatures.from_wheel(variant, out_stages=(2, 4)))
    return configure_scorer(pipe, FEATURE_SETTINGS if settings is None else settings)


def configure_scorer(pipe, settings: dict):
    """Replace the scorer by one with `settings` over its config (validated; statistics reset: calibrate next)."""
    from diffad.scoring.scorer import AnomalyScorer

    config = {k: v for k, v in pipe.scorer.config.items() if not k.startswith("_")}
    # A new scorer's per-category statistics are neutral again: so is what says they were taken.
    config["category_settings"] = {
        name: {k: v for k, v in values.items() if k != "calibration"}
        for name, values in (config.get("category_settings") or {}).items()
    } or None
    pipe.register_modules(scorer=AnomalyScorer(**{**config, **settings}))
    return pipe


def calibrate_pipeline(
    folder: str | Path,
    data: str,
    category: str | None,
    *,
    mode: str,
    num_images: int,
    seed: int,
    batch_size: int = 8,
    features: str = "none",
    settings: dict | None = None,
    select_images: int = 0,
    feature_head_steps: int = 300,
    show_progress: bool = False,
    fpr: float = 0.01,
) -> dict:
    """Calibrate the pipeline saved in `folder` on up to `num_images` good training images.

    `features`: "none", or an EfficientNet-Lite variant to attach first (see `attach_features`).
    `settings`: scorer settings to set first (e.g. num_inference_steps; calibration depends on them).
    `select_images`: held-out good training images on which synthetic defects choose the residual
    weights and deviation (`diffad.training.selection`; 0 keeps the scorer's). `feature_head_steps`:
    training steps of the feature head (with features and a feature_head_weight above 0). `show_progress`:
    progress bars for each pass (a fit's calibration can take minutes). `fpr`: the false-positive rate on
    the held-out good images that sets the saved "fpr" threshold. Writes what was chosen,
    and why, to `folder/selection.json`. Returns a summary (images used, the choice)."""
    from diffad import AnomalyDetectionPipeline
    from diffad.training import selection

    pipe = AnomalyDetectionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(**({"leave": False} if show_progress else {"disable": True}))
    if features != "none":
        attach_features(pipe, features)
    if settings:
        configure_scorer(pipe, settings)
    select = select_images > 0 and mode != "none"
    if select:  # every candidate needs its statistics
        configure_scorer(pipe, {f"{name}_weight": 1.0 for name in selection.candidates(pipe)})
    samples = good_training_samples(data, category)
    order = torch.randperm(len(samples), generator=generator_for(seed, "calibration")).tolist()
    pick, rest = order[:num_images], order[num_images:]
    held: list[int] = []
    if select:
        count = min(select_images, len(rest) // 2 if features != "none" else len(rest))
        held, rest = rest[:count], rest[count:]
    # Loaded at the larger of the two sizes: the pipeline resizes to its working resolution itself,
    # and features of upsampled images would not be those it sees at detection.
    size = max(pipe.resolution, pipe.scorer.feature_gaussian_resolution if features != "none" else 0)
    images = load_images([samples[i] for i in sorted(pick)], size, pipe.image_channels)
    gaussian_images = None  # the calibration images themselves, when no other good image is left
    if features != "none" and len(rest) >= 2:
        chosen = sorted(rest[:MAX_GAUSSIAN_IMAGES])
        gaussian_images = load_images([samples[i] for i in chosen], size, pipe.image_channels)
    pipe.calibrate(
        images,
        generator=generator_for(seed, "calibration-noise"),
        mode=mode,
        batch_size=batch_size,
        gaussian_images=gaussian_images,
        feature_head_steps=feature_head_steps,
    )
    # A model of several categories: each category's own statistics and choice, before the fallback's
    # choice sets the config's weights (every candidate still has its weight above 0 here).
    per_category = {}
    if len(pipe.categories) > 1 and mode != "none":
        for name in pipe.categories:
            per_category[name] = _calibrate_category(
                pipe, [s for s in samples if s.category == name], name, mode, num_images, seed, batch_size,
                select_images if select else 0, size, fpr,
            )  # fmt: skip
    record = None
    if len(held) >= MIN_SELECT_IMAGES:
        held_images = load_images([samples[i] for i in sorted(held)], size, pipe.image_channels)
        record = selection.select_settings(pipe, held_images, seed=seed, batch_size=batch_size, fpr=fpr)
    elif select:
        print(
            f"diffad: only {len(held)} good training images left to choose the residual weights on "
            f"(needs {MIN_SELECT_IMAGES}); keeping the scorer's weights"
        )

    if record is not None and per_category:
        record["categories"] = {name: got["record"] for name, got in per_category.items() if got["record"]}

    def save(tmp: Path) -> None:
        pipe.save_pretrained(str(tmp))
        if record is not None:
            write_json_atomic(Path(tmp) / SELECTION_FILE, record)

    write_final_atomic(folder, save, marker=PIPELINE_MARKER)
    summary = {"images": len(images), **_chosen(record)}
    if per_category:
        summary["categories"] = {
            name: {"images": got["images"], **_chosen(got["record"])} for name, got in per_category.items()
        }
    return summary


def _chosen(record: dict | None) -> dict:
    chosen, fitted = (None, None) if record is None else (record["chosen"], record["thresholds"])
    thresholds = None if fitted is None else {k: fitted[k] for k in ("f1", "fpr", "fpr_target", "default")}
    return {"selection": chosen, "thresholds": thresholds}


def _calibrate_category(
    pipe, samples, name, mode, num_images, seed, batch_size, select_images, size, fpr
) -> dict:
    """One category's calibration statistics and, with `select_images`, its weights and thresholds, on
    its own good training images (a seeded choice per category)."""
    from diffad.training import selection

    order = torch.randperm(len(samples), generator=generator_for(seed, f"calibration/{name}")).tolist()
    pick, rest = order[:num_images], order[num_images:]
    held = rest[:select_images]
    images = load_images([samples[i] for i in sorted(pick)], size, pipe.image_channels)
    pipe.calibrate(
        images,
        generator=generator_for(seed, "calibration-noise"),
        mode=mode,
        batch_size=batch_size,
        category=name,
    )
    record = None
    if len(held) >= MIN_SELECT_IMAGES:
        held_images = load_images([samples[i] for i in sorted(held)], size, pipe.image_channels)
        with pipe.use_category(name):
            record = selection.select_settings(pipe, held_images, seed=seed, batch_size=batch_size, fpr=fpr)
    elif select_images:
        print(f"diffad: category {name}: only {len(held)} good training images left to choose its weights on")
    return {"images": len(images), "record": record}
