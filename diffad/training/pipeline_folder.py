"""Stage 2's result: a whole detection pipeline folder that AnomalyDetectionPipeline.from_pretrained loads."""

from __future__ import annotations

from pathlib import Path

from diffad.training.checkpoints import write_final_atomic

PIPELINE_MARKER = "model_index.json"
PIPELINE_ENTRIES = [
    "vae", "unet", "scheduler", "scorer", "feature_extractor", "segmentation_head", PIPELINE_MARKER
]  # fmt: skip


def detection_pipeline(*, vae, unet, scheduler, scorer):
    from diffad.pipelines.pipeline_anomaly_detection import AnomalyDetectionPipeline

    return AnomalyDetectionPipeline(vae=vae, unet=unet, scheduler=scheduler, scorer=scorer)


def write_detection_pipeline(output_dir: str | Path, **components) -> None:
    """save_pretrained the pipeline into `output_dir` atomically (model_index.json appears last)."""
    pipe = detection_pipeline(**components)
    write_final_atomic(output_dir, lambda tmp: pipe.save_pretrained(str(tmp)), marker=PIPELINE_MARKER)
