"""Area under the per-region-overlap (PRO) curve, up to a false-positive rate of 0.3.

The PRO curve plots, for each threshold t, the mean over defect regions of the fraction of the
region flagged (score >= t) against the fraction of normal pixels flagged. `aupro_exact` follows
the MVTec AD evaluation: the whole curve, every distinct score a threshold, integrated with the
trapezoid rule to `max_fpr` (the last segment interpolated) and divided by `max_fpr`. It needs no
loop over thresholds: the false-positive rate only moves at normal scores, so the curve's
segments are the distinct normal scores, and the PRO at each is a suffix sum of per-pixel region
weights (1 / (region area * number of regions)) found with `searchsorted`.

`aupro_ader` reproduces ADer's `Evaluator.cal_pro_score` (zhangzjn/ADer, util/metric.py), so that
figures can sit beside its published tables: 200 thresholds `t` evenly spaced from the lowest to the
highest score, pixels flagged where score > t, the points with FPR < 0.3 kept, their FPRs rescaled
to [0, 1] and the area taken under that.
"""

from __future__ import annotations

import warnings

import numpy as np

from diffad.metrics.ranking import MetricWarning


def _segments(normal: np.ndarray, defect: np.ndarray, weights: np.ndarray, max_fpr: float):
    """The curve's segments from the top down to the first one that passes `max_fpr`.

    Returns (fpr_before, fpr_after, pro_before, pro_after) per distinct normal score v, descending:
    before = threshold just above v, after = threshold at v."""
    n = len(normal)
    # Only the top `max_fpr` share of normal scores (plus the group that crosses it) matters.
    lo = max(0, n - int(np.ceil(max_fpr * n)) - 1)
    tail = normal[lo:]
    last_of_value = np.empty(len(tail), dtype=bool)
    np.not_equal(tail[1:], tail[:-1], out=last_of_value[:-1])
    last_of_value[-1] = True
    ends = np.flatnonzero(last_of_value) + lo
    values = normal[ends]
    starts = np.empty_like(ends)
    starts[1:] = ends[:-1] + 1
    starts[0] = np.searchsorted(normal, values[0], side="left")
    fpr_before = (n - 1 - ends)[::-1] / n
    fpr_after = (n - starts)[::-1] / n
    # suffix[i] = PRO of the thresholds that flag defect[i:], the defect scores being ascending.
    suffix = np.concatenate([np.cumsum(weights[::-1])[::-1], [0.0]])
    values = values[::-1]
    pro_before = suffix[np.searchsorted(defect, values, side="right")]
    pro_after = suffix[np.searchsorted(defect, values, side="left")]
    return fpr_before, fpr_after, pro_before, pro_after


def aupro_exact(normal: np.ndarray, defect: np.ndarray, weights: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the exact PRO curve up to `max_fpr`.

    `normal` and `defect`: pixel scores, ascending; `weights[i]`: 1 / (area * number of regions) of
    the region that holds defect pixel i."""
    if not (len(normal) and len(defect)):
        return float("nan")
    f0, f1, p0, p1 = _segments(normal, defect, weights, max_fpr)
    whole = f1 <= max_fpr
    area = float(np.sum((f1[whole] - f0[whole]) * (p0[whole] + p1[whole]) / 2.0))
    crossing = np.flatnonzero(~whole)
    if len(crossing):
        j = crossing[0]
        width = max_fpr - f0[j]
        pro_at_cut = p0[j] + (p1[j] - p0[j]) * width / (f1[j] - f0[j])
        area += width * (p0[j] + pro_at_cut) / 2.0
    return float(area / max_fpr)


def pro_curve(
    normal: np.ndarray, defect: np.ndarray, weights: np.ndarray, max_fpr: float = 0.3, max_points: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) points of the exact curve up to `max_fpr`, thinned to about `max_points` for drawing."""
    if not (len(normal) and len(defect)):
        return np.array([0.0, max_fpr]), np.array([0.0, 0.0])
    f0, f1, p0, p1 = _segments(normal, defect, weights, max_fpr)
    inside = np.flatnonzero(f0 < max_fpr)
    f0, f1, p0, p1 = (a[: inside[-1] + 1] for a in (f0, f1, p0, p1))
    j = len(f1) - 1  # the last segment kept crosses max_fpr (or ends the curve): cut it there
    if f1[j] > max_fpr:
        p1[j] = p0[j] + (p1[j] - p0[j]) * (max_fpr - f0[j]) / (f1[j] - f0[j])
        f1[j] = max_fpr
    if len(f0) > max_points // 2:
        keep = np.unique(np.linspace(0, len(f0) - 1, max_points // 2).round().astype(np.int64))
        f0, f1, p0, p1 = f0[keep], f1[keep], p0[keep], p1[keep]
    # Each segment starts where the PRO jumped (a vertical step) and runs to its end point.
    fpr = np.concatenate([[0.0], np.column_stack([f0, f1]).ravel()])
    pro = np.concatenate([[0.0], np.column_stack([p0, p1]).ravel()])
    return fpr, pro


def aupro_ader(
    normal: np.ndarray,
    defect: np.ndarray,
    region: np.ndarray,
    region_area: np.ndarray,
    max_step: int = 200,
    max_fpr: float = 0.3,
) -> float:
    """ADer's AUPRO from the pooled pixels (`normal`, `defect` ascending, `region[i]` the region of
    defect pixel i), counted with histograms instead of ADer's loop over thresholds and regions."""
    if not (len(normal) and len(defect)):
        return float("nan")
    lowest, highest = min(normal[0], defect[0]), max(normal[-1], defect[-1])
    if not highest > lowest:
        warnings.warn(
            "AUPRO (ADer): every pixel has the same score; undefined (NaN)", MetricWarning, stacklevel=2
        )
        return float("nan")
    # The same expression as ADer's, so the grid matches it to the last bit for the same dtype.
    thresholds = np.arange(lowest, highest, (highest - lowest) / max_step)
    k = len(thresholds)
    fpr = (len(normal) - np.searchsorted(normal, thresholds, side="right")) / len(normal)
    # A defect pixel of score v is flagged at the thresholds below v: the first `flagged_at` ones.
    flagged_at = np.searchsorted(thresholds, defect, side="left")
    hist = np.bincount(region * (k + 1) + flagged_at, minlength=len(region_area) * (k + 1))
    hist = hist.reshape(len(region_area), k + 1)
    flagged = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][
        :, 1:
    ]  # flagged[r, j]: pixels of r above thresholds[j]
    pro = (flagged / region_area[:, None]).mean(axis=0)
    kept = fpr < max_fpr
    fpr, pro = fpr[kept], pro[kept]
    if len(fpr) < 2 or not fpr.max() > fpr.min():
        warnings.warn(
            "AUPRO (ADer): fewer than two distinct FPRs under the limit; undefined (NaN)",
            MetricWarning,
            stacklevel=2,
        )
        return float("nan")
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    # The FPRs fall as the threshold rises; the area is taken left to right as sklearn's `auc` does.
    return float(-np.trapezoid(pro, fpr))
