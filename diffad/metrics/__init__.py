"""Image and pixel AUROC, AP, F1-max, AUPRO and mAD, with ADer's names; exact from pooled pixels
(`PooledPixels`) or streamed from histograms in bounded memory (`PixelHistogram`)."""

from diffad.metrics.compute import (
    AUPRO_MODES,
    IMAGE_KEYS,
    METRIC_KEYS,
    PIXEL_KEYS,
    compute_metrics,
    image_metrics,
    pixel_metrics,
    with_mean,
)
from diffad.metrics.pixels import PooledPixels
from diffad.metrics.ranking import MetricWarning
from diffad.metrics.streamed import PixelHistogram

__all__ = [
    "AUPRO_MODES",
    "IMAGE_KEYS",
    "METRIC_KEYS",
    "PIXEL_KEYS",
    "MetricWarning",
    "PixelHistogram",
    "PooledPixels",
    "compute_metrics",
    "image_metrics",
    "pixel_metrics",
    "with_mean",
]
