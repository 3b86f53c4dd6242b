"""Pixels of all test images pooled once: normal pixels sorted, defect pixels tagged by region.

Every pixel metric (AUROC, AP, F1-max, both AUPROs, the drawn curves) is read off this one
structure, so the tens of millions of pixels of a test set are sorted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage import measure

from diffad.metrics import aupro as _aupro
from diffad.metrics import ranking


@dataclass(frozen=True)
class PooledPixels:
    """`normal`: scores of every pixel outside the masks, ascending. `defect`: scores of every pixel
    inside a mask, ascending, with `region` the index of its connected component (over all images)
    and `region_area[r]` the size of component r."""

    normal: np.ndarray
    defect: np.ndarray
    region: np.ndarray
    region_area: np.ndarray

    @classmethod
    def from_maps(cls, maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> PooledPixels:
        """`maps` and `masks`: sequences of 2-D arrays of equal shape per image (checked by the caller);
        a mask pixel is a defect where it is above 0.5."""
        binary = [np.asarray(mask) > 0.5 for mask in masks]
        dtype = np.result_type(*(np.asarray(m).dtype for m in maps[:1]), np.float32)
        total_normal = sum(int(b.size - np.count_nonzero(b)) for b in binary)
        normal = np.empty(total_normal, dtype=dtype)
        defect, region = [], []
        start = regions = 0
        for amap, is_defect in zip(maps, binary):
            amap = np.asarray(amap)
            values = amap[~is_defect]
            normal[start : start + len(values)] = values
            start += len(values)
            if is_defect.any():
                # 8-connectivity, as skimage's default and the MVTec AD evaluation code use.
                labels, count = measure.label(is_defect, connectivity=2, return_num=True)
                defect.append(amap[is_defect].astype(dtype, copy=False))
                region.append(labels[is_defect].astype(np.int64) - 1 + regions)
                regions += count
        normal.sort()
        if defect:
            defect_values = np.concatenate(defect)
            order = np.argsort(defect_values, kind="stable")
            defect_values, region_ids = defect_values[order], np.concatenate(region)[order]
        else:
            defect_values, region_ids = np.empty(0, dtype=dtype), np.empty(0, dtype=np.int64)
        return cls(normal, defect_values, region_ids, np.bincount(region_ids, minlength=regions))

    @property
    def num_normal(self) -> int:
        return len(self.normal)

    @property
    def num_defect(self) -> int:
        return len(self.defect)

    def auroc(self) -> float:
        return ranking.auroc(self.normal, self.defect)

    def average_precision(self) -> float:
        return ranking.average_precision(self.normal, self.defect)

    def f1_max(self) -> float:
        return ranking.f1_max(self.normal, self.defect)

    def aupro(self, max_fpr: float = 0.3) -> float:
        return _aupro.aupro_exact(self.normal, self.defect, self._region_weights(), max_fpr)

    def aupro_ader(self, max_step: int = 200, max_fpr: float = 0.3) -> float:
        return _aupro.aupro_ader(self.normal, self.defect, self.region, self.region_area, max_step, max_fpr)

    def roc_points(self, max_points: int = 512) -> tuple[np.ndarray, np.ndarray]:
        return ranking.roc_points(self.normal, self.defect, max_points)

    def pro_points(self, max_fpr: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
        return _aupro.pro_curve(self.normal, self.defect, self._region_weights(), max_fpr)

    def quantiles(self, q) -> np.ndarray:
        """Scores at the quantiles `q` of every pixel, from a sample of about a million."""
        step = max(1, (len(self.normal) + len(self.defect)) // 1_000_000)
        return np.quantile(np.concatenate([self.normal[::step], self.defect[::step]]), list(q))

    def _region_weights(self) -> np.ndarray:
        # Each region counts equally, whatever its size: a pixel weighs 1 / (area * number of regions).
        return 1.0 / (self.region_area[self.region] * len(self.region_area))
