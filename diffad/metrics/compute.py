"""`compute_metrics`: the seven metrics of the ADer benchmark and their mean, from scores and maps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffad.errors import ConfigError, DataError
from diffad.metrics import ranking
from diffad.metrics.pixels import PooledPixels
from diffad.metrics.streamed import PixelHistogram

IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
METRIC_KEYS = (*IMAGE_KEYS, *PIXEL_KEYS, "mad")
AUPRO_MODES = ("exact", "ader")


def to_numpy(values: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor or a list of numbers."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu()
        if values.dtype.is_floating_point and values.dtype.itemsize < 4:
            values = values.float()
        return values.numpy()
    array = np.asarray(values)
    return array.astype(np.float32) if array.dtype == np.float16 else array


def image_scores_and_labels(image_scores: Any, image_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked 1-D float scores and 0/1 labels of the same length."""
    scores = to_numpy(image_scores).astype(np.float64).reshape(-1)
    labels = to_numpy(image_labels).reshape(-1)
    if len(scores) != len(labels):
        raise DataError(f"{len(scores)} image scores but {len(labels)} labels: give one score per test image")
    if not np.all(np.isin(labels, (0, 1))):
        raise DataError(
            f"image labels must be 0 (good) or 1 (defective); got values {np.unique(labels)[:10]}"
        )
    if not np.all(np.isfinite(scores)):
        bad = np.flatnonzero(~np.isfinite(scores))
        raise DataError(
            f"{len(bad)} image scores are NaN or infinite (first at index {bad[0]}): "
            "the detector produced invalid values; check the model and its settings"
        )
    return scores, labels.astype(np.int64)


def maps_and_masks(anomaly_maps: Any, masks: Any, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-image 2-D maps and masks, checked: `count` of each, same shapes, finite maps.

    Either may be an (N, H, W) or (N, 1, H, W) array or tensor, or a list of (H, W) / (1, H, W)
    ones when the images differ in size."""
    maps = [_plane(m, "anomaly map", i) for i, m in enumerate(_items(anomaly_maps))]
    mask_list = [_plane(m, "mask", i) for i, m in enumerate(_items(masks))]
    if len(maps) != count or len(mask_list) != count:
        raise DataError(
            f"{count} image scores, {len(maps)} anomaly maps and {len(mask_list)} masks: give one of each per image"
        )
    for i, (amap, mask) in enumerate(zip(maps, mask_list)):
        if amap.shape != mask.shape:
            raise DataError(
                f"anomaly map {i} has shape {amap.shape} but its mask {mask.shape}: "
                "resize the maps to the masks' size (the pipeline returns maps at the input size)"
            )
        if not np.all(np.isfinite(amap)):
            raise DataError(
                f"anomaly map {i} holds {int(np.sum(~np.isfinite(amap)))} NaN or infinite values: "
                "the detector produced invalid values; check the model and its settings"
            )
    return maps, mask_list


def _items(values: Any) -> list:
    if isinstance(values, Sequence) and not isinstance(values, str | bytes):
        return list(values)
    array = to_numpy(values)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise DataError(f"expected maps/masks of shape (N, H, W) or (N, 1, H, W), got {array.shape}")
    return list(array)


def _plane(value: Any, what: str, index: int) -> np.ndarray:
    array = to_numpy(value)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise DataError(f"{what} {index} has shape {array.shape}; expected (H, W) or (1, H, W)")
    if what == "anomaly map" and not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return array


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    neg, pos = np.sort(scores[labels == 0]), np.sort(scores[labels == 1])
    ranking.both_classes(len(neg), len(pos), "image AUROC, AP and F1-max")
    return {
        "image_auroc": ranking.auroc(neg, pos),
        "image_ap": ranking.average_precision(neg, pos),
        "image_f1_max": ranking.f1_max(neg, pos),
    }


def pixel_metrics(pixels: PooledPixels | PixelHistogram, aupro: str = "exact") -> dict[str, float]:
    """The pixel metrics of pooled pixels (exact) or of a histogram of them (streamed)."""
    if aupro not in AUPRO_MODES:
        raise ConfigError(f"aupro must be one of {AUPRO_MODES}, got {aupro!r}")
    ranking.both_classes(pixels.num_normal, pixels.num_defect, "pixel AUROC, AP, F1-max and AUPRO")
    return {
        "pixel_auroc": pixels.auroc(),
        "pixel_ap": pixels.average_precision(),
        "pixel_f1_max": pixels.f1_max(),
        "aupro": pixels.aupro() if aupro == "exact" else pixels.aupro_ader(),
    }


def with_mean(metrics: dict[str, float | None]) -> dict[str, Any]:
    """Adds `mad`, the mean of the metrics that are defined, and `mad_of`, the keys it averaged."""
    averaged = [
        k for k in (*IMAGE_KEYS, *PIXEL_KEYS) if metrics.get(k) is not None and math.isfinite(metrics[k])
    ]
    result = dict(metrics)
    result["mad"] = float(np.mean([metrics[k] for k in averaged])) if averaged else float("nan")
    result["mad_of"] = averaged
    return result


def compute_metrics(
    image_scores: Any,
    image_labels: Any,
    anomaly_maps: Any = None,
    masks: Any = None,
    *,
    aupro: str = "exact",
) -> dict[str, Any]:
    """Image and pixel AUROC, AP and F1-max, AUPRO (to FPR 0.3) and their mean `mad`.

    Scores, labels, maps and masks may be numpy arrays or torch tensors. Pixel metrics pool every
    pixel of every image; with no maps and masks their keys are None. `mad` averages the metrics
    that are defined (not None, not NaN) and `mad_of` lists them. A metric that one class is missing
    for is NaN, with a `MetricWarning`. `aupro="ader"` computes AUPRO as the ADer benchmark does.
    """
    if aupro not in AUPRO_MODES:
        raise ConfigError(f"aupro must be one of {AUPRO_MODES}, got {aupro!r}")
    if (anomaly_maps is None) != (masks is None):
        raise ConfigError("pixel metrics need both anomaly_maps and masks; give both or neither")
    scores, labels = image_scores_and_labels(image_scores, image_labels)
    metrics: dict[str, float | None] = image_metrics(scores, labels)
    if anomaly_maps is None:
        metrics.update(dict.fromkeys(PIXEL_KEYS))
    else:
        maps, mask_list = maps_and_masks(anomaly_maps, masks, len(scores))
        metrics.update(pixel_metrics(PooledPixels.from_maps(maps, mask_list), aupro))
    return with_mean(metrics)
