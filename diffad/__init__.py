"""diffad: latent diffusion for visual anomaly detection and synthetic defects."""

from diffad.errors import ConfigError, DataError, DiffadError, OutputExistsError

__version__ = "0.1.0"

_LAZY = {
    "AnomalyDetectionPipeline": "diffad.pipelines.pipeline_anomaly_detection",
    "AnomalyDetectionOutput": "diffad.pipelines.pipeline_anomaly_detection",
    "AnomalySynthesisPipeline": "diffad.pipelines.pipeline_anomaly_synthesis",
    "AnomalySynthesisOutput": "diffad.pipelines.pipeline_anomaly_synthesis",
    "load_detector": "diffad.detectors",
}


def __getattr__(name):
    # Pipelines import diffusers, which is slow: load them only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffad' has no attribute {name!r}")


__all__ = ["ConfigError", "DataError", "DiffadError", "OutputExistsError", "__version__", *_LAZY]
