"""Stage 2's result: a whole detection pipeline folder that AnomalyDetectionPipeline.from_pretrained loads."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from diffad.training.checkpoints import write_final_atomic

PIPELINE_MARKER = "model_index.json"
PIPELINE_ENTRIES = ["vae", "unet", "scheduler", "scorer", "feature_extractor", PIPELINE_MARKER]


def _pipeline_class():
    try:
        module = importlib.import_module("diffad.pipelines.pipeline_anomaly_detection")
    except ModuleNotFoundError as err:
        if err.name != "diffad.pipelines.pipeline_anomaly_detection":
            raise
        return None
    return module.AnomalyDetectionPipeline


def _library(obj) -> tuple[str | None, str | None]:
    """The [library, class] pair diffusers writes into model_index.json for a component."""
    if obj is None:
        return (None, None)
    module = type(obj).__module__
    return ("diffusers" if module.split(".")[0] == "diffusers" else module, type(obj).__name__)


def save_detection_pipeline(folder: Path, *, vae, unet, scheduler, scorer) -> None:
    """save_pretrained the four components into `folder` as AnomalyDetectionPipeline lays them out."""
    pipeline_class = _pipeline_class()
    if pipeline_class is not None:
        pipeline_class(vae=vae, unet=unet, scheduler=scheduler, scorer=scorer).save_pretrained(str(folder))
        return
    # The pipeline class is not there yet: write the same layout by hand.
    import json

    import diffusers

    index = {"_class_name": "AnomalyDetectionPipeline", "_diffusers_version": diffusers.__version__}
    for name, component in (("scheduler", scheduler), ("scorer", scorer), ("unet", unet), ("vae", vae)):
        index[name] = list(_library(component))
        if component is not None:
            component.save_pretrained(str(folder / name))
    (folder / PIPELINE_MARKER).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_detection_pipeline(output_dir: str | Path, **components: torch.nn.Module | None) -> None:
    """Write the pipeline into `output_dir` atomically (model_index.json appears last)."""
    write_final_atomic(
        output_dir, lambda tmp: save_detection_pipeline(tmp, **components), marker=PIPELINE_MARKER
    )
