"""Pixel metrics in bounded memory: counts of normal and defect pixels per score bin.

`PixelHistogram` takes maps one at a time and keeps three arrays of `bins` entries: the number of
normal pixels, of defect pixels, and the sum over defect pixels of 1 / (area of their region) per
bin. The last is AUPRO's per-region overlap added up over the regions: the PRO at a threshold is
its suffix sum divided by the number of regions. Every metric here is a function of the ranking of
the scores only, so the bins may lie on any increasing transform of them; they are uniform in
u = asinh(score), which is linear near 0 and logarithmic in the tails, so one extreme pixel does not
make every other pixel share a bin.

The bins lie on a lattice: bin k at level e covers [k 2^e, (k+1) 2^e) in u, and the level is the
finest at which the u-range seen so far fits in `bins` bins. A bin of a level is the union of two
bins of the level below, so the histogram of a set of maps is the same whatever their order or the
shard they came from, and two histograms merge exactly (`merged`): a sharded run's counts equal one
process's.

The error: the metrics treat the pixels of one bin as tied (as the exact metrics treat equal
scores). The AUROC is then off by at most half the share of (normal, defect) pairs that share a bin
(`auroc_bound`). AP and F1-max move by about (pixels sharing a bin near a defect pixel) / (defect
pixels), so only sets with a few dozen defect pixels come near 1e-3. With 2^18 bins every figure
was within 1e-3 of the exact one on random maps and maps of one- and two-pixel regions
(tests/test_streamed_metrics.py), and within 1e-5 on 256x256 maps like the dev sets'
(benchmarks/bench_scale.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from skimage import measure

BINS = 1 << 18  # 6 MB per histogram
MIN_LEVEL = -40  # bins of 2^-40 in u: finer than float32 scores can differ


def _level(lo: float, hi: float, bins: int) -> int:
    """The finest lattice level at which [lo, hi] spans at most `bins` bins."""
    if hi <= lo:
        return MIN_LEVEL
    level = max(MIN_LEVEL, math.ceil(math.log2((hi - lo) / bins)) - 1)
    while math.floor(hi / 2.0**level) - math.floor(lo / 2.0**level) >= bins:
        level += 1
    return level


class PixelHistogram:
    """Normal and defect pixel counts and region weights per score bin, for maps added one by one."""

    def __init__(self, bins: int = BINS):
        self.bins = int(bins)
        self.level = MIN_LEVEL
        self.offset = 0  # lattice index of bin 0
        self.lo, self.hi = math.inf, -math.inf  # the range of u seen
        self.score_min, self.score_max = math.inf, -math.inf
        self.normal = np.zeros(self.bins, dtype=np.int64)
        self.defect = np.zeros(self.bins, dtype=np.int64)
        self.weight = np.zeros(self.bins, dtype=np.float64)
        self.regions = 0

    # --- accumulating ---------------------------------------------------------------------------

    def add(self, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        """One map and its mask (a pixel is a defect where the mask is above 0.5)."""
        amap = np.asarray(anomaly_map)
        is_defect = np.asarray(mask) > 0.5
        u = np.arcsinh(amap.astype(np.float64))
        self._cover(float(u.min()), float(u.max()))
        self.score_min = min(self.score_min, float(amap.min()))
        self.score_max = max(self.score_max, float(amap.max()))
        # Counted over the bins this map spans only: a map covers few of them.
        index = self._index(u)
        first = int(index.min())
        index -= first
        span = slice(first, first + int(index.max()) + 1)
        width = span.stop - span.start
        self.normal[span] += np.bincount(index[~is_defect], minlength=width)
        if is_defect.any():
            # 8-connectivity, as skimage's default, the MVTec AD evaluation and the exact AUPRO use.
            labels, count = measure.label(is_defect, connectivity=2, return_num=True)
            inside = labels[is_defect]
            area = np.bincount(inside, minlength=count + 1)
            self.defect[span] += np.bincount(index[is_defect], minlength=width)
            self.weight[span] += np.bincount(index[is_defect], weights=1.0 / area[inside], minlength=width)
            self.regions += count

    def _index(self, u: np.ndarray) -> np.ndarray:
        return np.floor(u / 2.0**self.level).astype(np.int64) - self.offset

    def _cover(self, lo: float, hi: float) -> None:
        """Coarsen the bins (exactly, two into one) until they cover [lo, hi] as well."""
        lo, hi = min(lo, self.lo), max(hi, self.hi)
        level = _level(lo, hi, self.bins)
        offset = math.floor(lo / 2.0**level)
        if (level, offset) != (self.level, self.offset) and self.lo <= self.hi:
            # Only the bins up to the highest u seen hold pixels; those past it may fall outside.
            used = math.floor(self.hi / 2.0**self.level) - self.offset + 1
            new = ((np.arange(used, dtype=np.int64) + self.offset) >> (level - self.level)) - offset
            for name in ("normal", "defect", "weight"):
                values = getattr(self, name)[:used]
                merged = np.bincount(new, weights=values, minlength=self.bins)
                setattr(self, name, merged.astype(values.dtype) if name != "weight" else merged)
        self.level, self.offset, self.lo, self.hi = level, offset, lo, hi

    @classmethod
    def merged(cls, histograms: Iterable[PixelHistogram]) -> PixelHistogram:
        """One histogram of every pixel of `histograms` (equal to adding their maps to one)."""
        histograms = list(histograms)
        total = cls(histograms[0].bins if histograms else BINS)
        for h in histograms:
            if h.lo > h.hi:
                continue
            if h.bins != total.bins:
                raise ValueError(f"cannot merge histograms of {h.bins} and {total.bins} bins")
            total._cover(h.lo, h.hi)
            h = h.copy()
            h._cover(total.lo, total.hi)
            total.normal += h.normal
            total.defect += h.defect
            total.weight += h.weight
            total.regions += h.regions
            total.score_min = min(total.score_min, h.score_min)
            total.score_max = max(total.score_max, h.score_max)
        return total

    def copy(self) -> PixelHistogram:
        other = PixelHistogram(self.bins)
        other.__dict__.update(
            {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}
        )
        return other

    # --- what the metrics read ------------------------------------------------------------------

    @property
    def num_normal(self) -> int:
        return int(self.normal.sum())

    @property
    def num_defect(self) -> int:
        return int(self.defect.sum())

    def _suffix(self, values: np.ndarray) -> np.ndarray:
        """suffix[b] = sum of values[b:], the pixels flagged by a threshold at bin b's lower edge."""
        return np.cumsum(values[::-1])[::-1]

    def _edges(self) -> np.ndarray:
        """Lower edges of the bins, in u."""
        return (np.arange(self.bins + 1, dtype=np.float64) + self.offset) * 2.0**self.level

    def auroc(self) -> float:
        n, d = self.num_normal, self.num_defect
        if not (n and d):
            return float("nan")
        below = np.cumsum(self.normal) - self.normal
        return float(np.sum(self.defect * (below + 0.5 * self.normal)) / (float(n) * d))

    def auroc_bound(self) -> float:
        """The most the AUROC can be off the exact one: half the share of pairs tied in a bin."""
        n, d = self.num_normal, self.num_defect
        return (
            float(0.5 * np.sum(self.normal * self.defect.astype(np.float64)) / (float(n) * d))
            if n and d
            else 0.0
        )

    def _positive_bins(self):
        tp = self._suffix(self.defect).astype(np.float64)
        fp = self._suffix(self.normal).astype(np.float64)
        has = self.defect > 0
        return tp[has], fp[has], self.defect[has].astype(np.float64)

    def average_precision(self) -> float:
        if not (self.num_normal and self.num_defect):
            return float("nan")
        tp, fp, new_tp = self._positive_bins()
        return float(np.sum(new_tp / self.num_defect * tp / (tp + fp)))

    def f1_max(self) -> float:
        if not (self.num_normal and self.num_defect):
            return float("nan")
        tp, fp, _ = self._positive_bins()
        return float(np.max(2.0 * tp / (tp + fp + self.num_defect)))

    def _pro_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, PRO) at every bin edge, from the top threshold (0, 0) down."""
        fpr = np.concatenate([[0.0], self._suffix(self.normal)[::-1] / self.num_normal])
        pro = np.concatenate([[0.0], self._suffix(self.weight)[::-1] / self.regions])
        return fpr, pro

    def aupro(self, max_fpr: float = 0.3) -> float:
        if not (self.num_normal and self.num_defect):
            return float("nan")
        fpr, pro = self._cut(*self._pro_curve(), max_fpr)
        return float(np.sum((fpr[1:] - fpr[:-1]) * (pro[1:] + pro[:-1]) / 2.0) / max_fpr)

    @staticmethod
    def _cut(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> tuple[np.ndarray, np.ndarray]:
        """The curve up to `max_fpr`, its last segment interpolated there (as the exact AUPRO)."""
        past = np.flatnonzero(fpr > max_fpr)
        if not len(past):
            return fpr, pro
        j = past[0]
        cut = pro[j - 1] + (pro[j] - pro[j - 1]) * (max_fpr - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        return np.append(fpr[:j], max_fpr), np.append(pro[:j], cut)

    def aupro_ader(self, max_step: int = 200, max_fpr: float = 0.3) -> float:
        """ADer's 200-threshold AUPRO (see diffad.metrics.aupro.aupro_ader), its counts read off the
        bins with pixels spread evenly in u inside a bin."""
        if not (self.num_normal and self.num_defect) or not self.score_max > self.score_min:
            return float("nan")
        lowest, highest = self.score_min, self.score_max
        thresholds = np.arange(lowest, highest, (highest - lowest) / max_step)
        u = np.arcsinh(thresholds.astype(np.float64))
        edges = self._edges()

        def above(values):
            cumulative = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
            return cumulative[-1] - np.interp(u, edges, cumulative)

        fpr = above(self.normal) / self.num_normal
        pro = above(self.weight) / self.regions
        kept = fpr < max_fpr
        fpr, pro = fpr[kept], pro[kept]
        if len(fpr) < 2 or not fpr.max() > fpr.min():
            return float("nan")
        fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
        return float(-np.trapezoid(pro, fpr))

    def roc_points(self, max_points: int = 512) -> tuple[np.ndarray, np.ndarray]:
        if not (self.num_normal and self.num_defect):
            return np.array([0.0, 1.0]), np.array([0.0, 1.0])
        fpr = np.concatenate([[0.0], self._suffix(self.normal)[::-1] / self.num_normal])
        tpr = np.concatenate([[0.0], self._suffix(self.defect)[::-1] / self.num_defect])
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(np.int64))
        return np.append(fpr[keep], 1.0), np.append(tpr[keep], 1.0)

    def pro_points(self, max_fpr: float = 0.3, max_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        if not (self.num_normal and self.num_defect):
            return np.array([0.0, max_fpr]), np.array([0.0, 0.0])
        fpr, pro = self._cut(*self._pro_curve(), max_fpr)
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(np.int64))
        return fpr[keep], pro[keep]

    def quantiles(self, q: Iterable[float]) -> np.ndarray:
        """Scores at the quantiles `q` of every pixel, to the bin (the lower edge of the bin)."""
        counts = np.cumsum(self.normal + self.defect)
        ranks = np.asarray(list(q)) * max(int(counts[-1]) - 1, 0)
        index = np.searchsorted(counts, ranks, side="right")
        return np.sinh(self._edges()[np.minimum(index, self.bins - 1)])
