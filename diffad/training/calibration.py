"""After training: record the scorer's calibration statistics on good images, inside the pipeline folder.

Uncalibrated, the residual maps (pixel L1, 1 - SSIM, latent) are summed on their own scales;
calibrated, each is a z-score against good images first. `diffad fit` calibrates on a seeded
subset of the good training images (the pipeline's `calibrate`), then rewrites the folder atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffad.training.checkpoints import write_final_atomic
from diffad.training.data import good_training_samples, load_images
from diffad.training.order import generator_for
from diffad.training.pipeline_folder import PIPELINE_MARKER


def calibrate_pipeline(
    folder: str | Path,
    data: str,
    category: str | None,
    *,
    mode: str,
    num_images: int,
    seed: int,
    batch_size: int = 8,
) -> int:
    """Calibrate the pipeline saved in `folder` on up to `num_images` good training images; returns how many."""
    from diffad import AnomalyDetectionPipeline

    pipe = AnomalyDetectionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    samples = good_training_samples(data, category)
    pick = torch.randperm(len(samples), generator=generator_for(seed, "calibration"))[:num_images]
    images = load_images([samples[i] for i in sorted(pick.tolist())], pipe.resolution, pipe.image_channels)
    pipe.calibrate(
        images, generator=generator_for(seed, "calibration-noise"), mode=mode, batch_size=batch_size
    )
    write_final_atomic(folder, lambda tmp: pipe.save_pretrained(str(tmp)), marker=PIPELINE_MARKER)
    return len(images)
