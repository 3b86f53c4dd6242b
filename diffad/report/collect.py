"""Collecting one category's per-image results as they come, in memory that does not grow with maps.

Each image leaves a row (path, label, defect type, score) and its pixels in the histogram of its
(label, defect type): the category's figures and every defect type's (with the good images) are
sums of those. Maps, masks and inputs are kept only for the images the report may show
(`case_candidates`): an image outside the `count` highest or lowest of its class among those seen so
far can never enter them later. With `keep_maps` every map and mask is kept instead, for the exact
pixel metrics. Collectors of the shards of a sharded run merge into the one a single process makes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffad.metrics.streamed import PixelHistogram
from diffad.report.results import CategoryResults


def case_candidates(labels: np.ndarray, scores: np.ndarray, count: int) -> list[int]:
    """Every image the report can show as a best or worst case (`select_cases` ranks within each class
    by score: the `count` highest and lowest of each class cover it, whatever the threshold)."""
    chosen: set[int] = set()
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        ranked = idx[np.argsort(scores[idx], kind="stable")]
        chosen.update(int(i) for i in ranked[:count])
        chosen.update(int(i) for i in ranked[-count:])
    return sorted(chosen)


@dataclass
class Collector:
    category: str
    num_cases: int
    keep_maps: bool
    has_masks: bool
    rows: list[tuple[int, str, int, str, float]] = field(default_factory=list)
    histograms: dict[tuple[int, str], PixelHistogram] = field(default_factory=dict)
    maps: dict[int, np.ndarray] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    reconstructions: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, index: int, sample, score: float, anomaly_map, mask, image, reconstruction=None) -> None:
        """One image's results; `index` is its place in the category's list of samples."""
        self.rows.append((index, sample.image_path, int(sample.label), sample.defect_type, float(score)))
        if not self.keep_maps:
            key = (int(sample.label), sample.defect_type)
            self.histograms.setdefault(key, PixelHistogram()).add(anomaly_map, mask)
        self.maps[index], self.masks[index], self.inputs[index] = anomaly_map, mask, image
        if reconstruction is not None:
            self.reconstructions[index] = reconstruction

    def prune(self) -> None:
        """Drop what no report can show (and, streaming, every other map)."""
        index = np.array([r[0] for r in self.rows])
        labels, scores = np.array([r[2] for r in self.rows]), np.array([r[4] for r in self.rows])
        keep = {int(index[i]) for i in case_candidates(labels, scores, self.num_cases)}
        for held in (self.inputs, self.reconstructions) + (() if self.keep_maps else (self.maps, self.masks)):
            for i in [i for i in held if i not in keep]:
                del held[i]

    @classmethod
    def merged(cls, parts: list[Collector]) -> Collector:
        """One collector of every shard's results, in the order of the samples."""
        first = parts[0]
        total = cls(first.category, first.num_cases, first.keep_maps, first.has_masks)
        for part in parts:
            total.rows += part.rows
            for name in ("maps", "masks", "inputs", "reconstructions"):
                getattr(total, name).update(getattr(part, name))
            total.seconds += part.seconds
        for key in sorted({k for part in parts for k in part.histograms}):
            total.histograms[key] = PixelHistogram.merged(
                p.histograms[key] for p in parts if key in p.histograms
            )
        total.rows.sort()
        total.prune()
        return total

    def results(self) -> CategoryResults:
        positions = {row[0]: i for i, row in enumerate(self.rows)}
        if [row[0] for row in self.rows] != list(range(len(self.rows))):
            raise ValueError(f"{self.category}: results of images {sorted(positions)[:5]}... are missing")

        def held(items: dict) -> dict | list:
            return [items[i] for i in range(len(self.rows))] if self.keep_maps else items

        return CategoryResults(
            category=self.category,
            paths=[r[1] for r in self.rows],
            labels=np.array([r[2] for r in self.rows]),
            defect_types=[r[3] for r in self.rows],
            scores=np.array([r[4] for r in self.rows]),
            maps=held(self.maps),
            masks=held(self.masks) if self.has_masks else None,
            inputs=self.inputs,
            reconstructions=self.reconstructions or None,
            seconds=self.seconds,
            pixels=None if self.keep_maps else self.histograms,
        )
