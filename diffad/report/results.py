"""Per-image results of one category, and the metrics, curves and cases the report is made of."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffad.errors import DataError
from diffad.metrics import METRIC_KEYS, PIXEL_KEYS, PooledPixels, image_metrics, pixel_metrics, with_mean
from diffad.metrics.compute import image_scores_and_labels, maps_and_masks
from diffad.metrics.ranking import f1_best_threshold, roc_points
from diffad.metrics.streamed import PixelHistogram


@dataclass
class CategoryResults:
    """What a detector produced on the test images of one category, one entry per image.

    `masks` None: the dataset has no masks; pixel metrics are then not computed (None), not NaN.
    `inputs` and `reconstructions` are only needed for the report's panels: anything `to_rgb8`
    reads (uint8 (H, W, 3) keeps memory low); None where a detector reconstructs nothing.
    `inputs`, `reconstructions`, and with `pixels` also `maps` and `masks`, may be dicts
    {image index: item} holding only the images shown. `pixels`: histograms of the pixels per
    (label, defect type), for the streamed pixel metrics; None: the exact ones, from every map."""

    category: str
    paths: list[str]
    labels: np.ndarray
    defect_types: list[str]
    scores: np.ndarray
    maps: Any
    masks: Any
    inputs: list | None = None
    reconstructions: list | None = None
    seconds: float | None = None  # detection time, all images
    saved_threshold: tuple[str, float] | None = None  # (name, value) saved with the detector, if any
    pixels: dict[tuple[int, str], PixelHistogram] | None = None
    has_masks: bool = field(init=False, default=True)

    def __post_init__(self):
        self.scores, self.labels = image_scores_and_labels(self.scores, self.labels)
        n = len(self.scores)
        if len(self.paths) != n or len(self.defect_types) != n:
            raise DataError(
                f"{self.category}: {n} scores but {len(self.paths)} paths and {len(self.defect_types)} defect types"
            )
        self.has_masks = self.masks is not None
        if isinstance(self.maps, dict):  # the shown images' only
            if not self.has_masks:
                self.masks = {i: np.zeros(np.shape(m)[-2:], dtype=np.uint8) for i, m in self.maps.items()}
            keys = sorted(self.maps)
            checked = maps_and_masks([self.maps[i] for i in keys], [self.masks[i] for i in keys], len(keys))
            self.maps, self.masks = (dict(zip(keys, values)) for values in checked)
        else:
            if not self.has_masks:
                self.masks = [np.zeros(np.shape(m)[-2:], dtype=np.uint8) for m in self.maps]
            self.maps, self.masks = maps_and_masks(self.maps, self.masks, n)
        for name in ("inputs", "reconstructions"):
            items = getattr(self, name)
            if items is not None and not isinstance(items, dict) and len(items) != n:
                raise DataError(f"{self.category}: {n} images but {len(items)} {name}")

    def cases_only(self, keep) -> CategoryResults:
        """The same results with maps, masks, inputs and reconstructions of the images at `keep` only
        (the report's cases), to free the memory once `summarize` has read them."""

        def some(items):
            if items is None:
                return None
            return {i: items[i] for i in keep if not isinstance(items, dict) or i in items}

        return CategoryResults(
            self.category,
            self.paths,
            self.labels,
            self.defect_types,
            self.scores,
            some(self.maps),
            some(self.masks) if self.has_masks else None,
            inputs=some(self.inputs),
            reconstructions=some(self.reconstructions),
            seconds=self.seconds,
            saved_threshold=self.saved_threshold,
            pixels=self.pixels,
        )


@dataclass
class CategorySummary:
    category: str
    metrics: dict[str, Any]
    per_defect: dict[str, dict[str, Any]]
    num_images: int
    threshold: float  # the F1-best image threshold
    image_roc: tuple[np.ndarray, np.ndarray]
    pixel_roc: tuple[np.ndarray, np.ndarray] | None
    pro: tuple[np.ndarray, np.ndarray] | None
    colour_range: tuple[float, float] = field(default=(0.0, 1.0))
    at_threshold: dict | None = None  # false-positive rate and recall at the saved threshold
    pixel_metrics: str = "exact"  # or "streamed": from histograms (diffad.metrics.streamed)


def _pixel_part(results: CategoryResults, index: np.ndarray, aupro: str):
    """The pooled pixels (or their histogram, streamed) of the images at `index`, and their metrics."""
    if results.pixels is not None:
        groups = {(int(results.labels[i]), results.defect_types[i]) for i in index}
        pixels = PixelHistogram.merged(results.pixels[g] for g in sorted(groups) if g in results.pixels)
    elif isinstance(results.maps, dict):
        raise DataError(f"{results.category}: the maps of only some images are kept, and no histograms")
    else:
        pixels = PooledPixels.from_maps([results.maps[i] for i in index], [results.masks[i] for i in index])
    return pixels, pixel_metrics(pixels, aupro) if results.has_masks else dict.fromkeys(PIXEL_KEYS)


def summarize(results: CategoryResults, aupro: str = "exact") -> CategorySummary:
    """The metrics of the category, of each defect type (with the good images, so both classes are
    there), the F1-best threshold, the curves to draw and a common colour range for the maps."""
    everything = np.arange(len(results.scores))
    pixels, pixel_values = _pixel_part(results, everything, aupro)
    metrics = with_mean({**image_metrics(results.scores, results.labels), **pixel_values})
    good = np.flatnonzero(results.labels == 0)
    types = np.array(results.defect_types)
    per_defect = {}
    for defect in sorted(set(results.defect_types[i] for i in np.flatnonzero(results.labels == 1))):
        chosen = np.concatenate([good, np.flatnonzero((types == defect) & (results.labels == 1))])
        _, values = _pixel_part(results, chosen, aupro)
        per_defect[defect] = with_mean(
            {**image_metrics(results.scores[chosen], results.labels[chosen]), **values}
        )
    neg, pos = np.sort(results.scores[results.labels == 0]), np.sort(results.scores[results.labels == 1])
    has_masks = results.has_masks and pixels.num_defect > 0
    return CategorySummary(
        category=results.category,
        metrics=metrics,
        per_defect=per_defect,
        num_images=len(results.scores),
        threshold=f1_best_threshold(neg, pos),
        image_roc=roc_points(neg, pos),
        pixel_roc=pixels.roc_points() if has_masks else None,
        pro=pixels.pro_points() if has_masks else None,
        colour_range=_colour_range(pixels),
        at_threshold=_at_threshold(results),
        pixel_metrics="streamed" if results.pixels is not None else "exact",
    )


def _at_threshold(results: CategoryResults) -> dict | None:
    if results.saved_threshold is None:
        return None
    from diffad.scoring.thresholds import rates_at

    name, value = results.saved_threshold
    return {"name": name, **rates_at(results.scores, results.labels, value)}


def _colour_range(pixels) -> tuple[float, float]:
    """The 1st to 99.9th percentile of all pixels: one colour scale for every panel of the category,
    not saturated by a few extreme pixels."""
    if not pixels.num_normal + pixels.num_defect:
        return 0.0, 1.0
    low, high = (float(v) for v in pixels.quantiles([0.01, 0.999]))
    return (low, high) if high > low else (low, low + 1.0)


def mean_row(summaries: list[CategorySummary]) -> dict[str, Any]:
    """Each metric averaged over the categories (ADer's mean row); mAD recomputed from those means.
    A metric undefined (NaN) in one category is undefined in the mean."""
    row: dict[str, Any] = {}
    for key in METRIC_KEYS[:-1]:
        values = [s.metrics[key] for s in summaries if s.metrics[key] is not None]
        row[key] = float(np.mean(values)) if values else None
    return with_mean(row)


def finite_or_none(value: Any) -> Any:
    """NaN and infinities as None (JSON null), recursively: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def select_cases(results: CategoryResults, threshold: float, count: int) -> tuple[list[int], list[int]]:
    """Indices of the `count` best and `count` worst judged images, half defective and half good
    where both are there. The judgement is the margin of the score past the F1-best threshold on
    the right side for the label: best = highest defective and lowest good scores; worst = missed
    defects (lowest defective) and false alarms (highest good)."""
    sign = np.where(results.labels == 1, 1.0, -1.0)
    cut = threshold if math.isfinite(threshold) else float(np.median(results.scores))
    margin = (results.scores - cut) * sign
    by_class = [np.flatnonzero(results.labels == label) for label in (1, 0)]
    best, worst = [], []
    for chosen, descending in ((best, True), (worst, False)):
        pools = [idx[~np.isin(idx, best)] for idx in by_class]  # worst never repeats a best case
        ranked = [
            idx[np.argsort(-margin[idx] if descending else margin[idx], kind="stable")] for idx in pools
        ]
        quota = [min(len(ranked[0]), max(count - count // 2, count - len(ranked[1]))), 0]
        quota[1] = min(len(ranked[1]), count - quota[0])
        taken = [int(i) for r, q in zip(ranked, quota) for i in r[:q]]
        chosen.extend(sorted(taken, key=lambda i: -margin[i] if descending else margin[i]))
    return best, worst
