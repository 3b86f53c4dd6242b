"""What the inspection page shows, without the page: run a saved detector once on uploaded images,
keep the maps, and draw panels, verdicts and downloads at any threshold from them.

A threshold changes only what is drawn (overlay colours, the region above it, the verdicts), never
the maps, so the page's slider re-renders from `Inspected` records and never runs the model again.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffad.errors import DiffadError

TILE_SIZE = 256  # px high, per panel
REGION_COLOUR = np.array([255, 0, 0], dtype=np.float32)  # the region above the threshold, pure red
CSV_FIELDS = ("image", "score", "is_defective", "threshold", "map_png", "map_min", "map_max")


@dataclass
class Inspected:
    """One image's results: the input and reconstruction as (H, W, 3) uint8, the map (H, W) float32."""

    name: str
    image: np.ndarray
    anomaly_map: np.ndarray
    score: float
    reconstruction: np.ndarray | None = None


class Inspector:
    """A saved detector (a pipeline or a reference detector folder) and the threshold it saved."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str | None = None,
        seed: int = 0,
        batch_size: int = 8,
        category: str | None = None,
    ):
        from diffad.detectors import category_options, category_scope, load_detector, model_for_category
        from diffad.scoring.thresholds import resolve, saved_thresholds

        self.model_dir = model_for_category(model_dir, category)  # one model per category: its own
        self.detector = load_detector(self.model_dir, device)
        self.category = category
        category_options(self.detector, category)  # an unknown category: the known ones, now
        self.channels = int(getattr(self.detector, "image_channels", 3))
        with category_scope(self.detector, category):  # a model of many categories: this one's
            self.saved = saved_thresholds(self.detector)
            self.default = resolve(self.detector)  # (name, value) or None
        self.seed = seed
        self.batch_size = batch_size

    def describe(self) -> str:
        if self.default is None:
            return f"{self.model_dir}: no saved threshold (diffad fit saves them); set one with the slider"
        name, value = self.default
        other = "f1" if name == "fpr" else "fpr"
        extra = (
            f"; the {other} threshold is {self.saved[other]:.4g}" if self.saved.get(other) is not None else ""
        )
        return f"{self.model_dir}: saved {name} threshold {value:.4g} (the default){extra}"

    def load(self, files: list[tuple[str, str | Path]]) -> tuple[list, list[str], list[str]]:
        """Open each (name, path): the images as tensors, their names, and one message per file that
        could not be read (the rest go on)."""
        from diffad.data.images import image_to_tensor, open_image

        tensors, names, problems = [], [], []
        for name, path in files:
            try:
                tensors.append(image_to_tensor(open_image(path, what="upload"), self.channels))
                names.append(name)
            except DiffadError as err:
                problems.append(str(err).replace(str(path), name))
        return tensors, names, problems

    def run(self, files: list[tuple[str, str | Path]]) -> tuple[list[Inspected], list[str]]:
        """Detect on every readable file; returns the results and a message per file left out."""
        import torch

        from diffad.report.evaluate import call_detector
        from diffad.report.panels import to_rgb8

        tensors, names, problems = self.load(files)
        results: list[Inspected] = []
        for start in range(0, len(tensors), self.batch_size):
            chunk = tensors[start : start + self.batch_size]
            generators = [torch.Generator().manual_seed(self.seed + start + i) for i in range(len(chunk))]
            try:
                output = call_detector(
                    self.detector, chunk, self.batch_size, generators, category=self.category
                )
            except DiffadError as err:
                problems += [f"{n}: {err}" for n in names[start : start + len(chunk)]]
                continue
            recons = output.reconstructions if output.reconstructions is not None else [None] * len(chunk)
            for i, (image, amap, score, recon) in enumerate(
                zip(chunk, output.anomaly_maps, output.anomaly_scores, recons)
            ):
                results.append(
                    Inspected(
                        name=names[start + i],
                        image=to_rgb8(image),
                        anomaly_map=np.asarray(amap, dtype=np.float32),
                        score=float(score),
                        reconstruction=None if recon is None else to_rgb8(np.asarray(recon)),
                    )
                )
        return results, problems


def score_range(results: list[Inspected], saved: dict | None = None) -> tuple[float, float]:
    """The slider's span: every score, every map's maximum and the saved thresholds, with a margin
    (a threshold above every map's maximum flags nothing; below every score, everything)."""
    values = [v for r in results for v in (r.score, float(r.anomaly_map.max()))]
    values += [v for k, v in (saved or {}).items() if k in ("f1", "fpr") and v is not None]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    margin = 0.05 * (hi - lo) if hi > lo else 0.5
    # Ends rounded outwards to 3 decimals: the page prints them.
    return math.floor((lo - margin) * 1000) / 1000, math.ceil((hi + margin) * 1000) / 1000


def colour_floor(results: list[Inspected]) -> float:
    """The overlay's blue end: the 1st percentile of every map's values (a few very low pixels would
    wash every colour out)."""
    sample = np.concatenate(
        [r.anomaly_map.reshape(-1)[:: max(1, r.anomaly_map.size // 50_000)] for r in results]
    )
    return float(np.quantile(sample, 0.01))


def region(result: Inspected, threshold: float) -> np.ndarray:
    """The input with the pixels whose map is at or above `threshold` in red."""
    above = (result.anomaly_map >= threshold)[..., None]
    tinted = np.where(above, REGION_COLOUR, result.image.astype(np.float32) * 0.6)
    return tinted.astype(np.uint8)


def panel(results: list[Inspected], threshold: float, low: float) -> np.ndarray:
    """One row per image: input | map overlay | reconstruction (when the model makes them) | region
    above the threshold, labelled with its name, score and verdict. The overlay's colours run from
    `low` (blue) to the threshold (red): red is at or above it."""
    from diffad.report.panels import make_panel, overlay

    reconstructions = any(r.reconstruction is not None for r in results)
    titles = ["input", "map (red: at or above threshold)"]
    titles += ["reconstruction"] if reconstructions else []
    titles.append(f"region >= {threshold:.4g}")
    rows, labels = [], []
    for r in results:
        tiles = [r.image, overlay(r.image, r.anomaly_map, 0.5, low, max(threshold, low + 1e-6))]
        if reconstructions:
            tiles.append(r.reconstruction if r.reconstruction is not None else np.full_like(r.image, 128))
        rows.append([*tiles, region(r, threshold)])
        labels.append(f"{r.name}  {r.score:.4g}  {'DEFECTIVE' if r.score >= threshold else 'good'}")
    return make_panel(rows, column_titles=titles, row_labels=labels, tile_size=TILE_SIZE)


def verdict_rows(results: list[Inspected], threshold: float) -> list[list]:
    """[image, score, verdict] per result."""
    return [[r.name, round(r.score, 4), "defective" if r.score >= threshold else "good"] for r in results]


def scores_csv(results: list[Inspected], threshold: float, map_names: list[str]) -> str:
    """One row per image: its score, verdict (1/0) at `threshold`, and its map's file and range."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r, map_name in zip(results, map_names):
        lo, hi = float(r.anomaly_map.min()), float(r.anomaly_map.max())
        writer.writerow(
            [r.name, f"{r.score:.9g}", int(r.score >= threshold), repr(float(threshold)), map_name]
            + [f"{lo:.9g}", f"{hi:.9g}"]
        )
    return text.getvalue()


def map_file_names(results: list[Inspected]) -> list[str]:
    """maps/<stem>.png, made unique when two uploads share a stem."""
    names, seen = [], set()
    for r in results:
        stem = Path(r.name).stem or "image"
        candidate, k = stem, 1
        while candidate in seen:
            k += 1
            candidate = f"{stem}-{k}"
        seen.add(candidate)
        names.append(f"maps/{candidate}.png")
    return names


def write_downloads(results: list[Inspected], threshold: float, folder: Path) -> list[str]:
    """folder/scores.csv and folder/maps.zip (16-bit map PNGs as `diffad detect` writes them, with the
    CSV); returns their paths."""
    from diffad.files import atomic_write
    from diffad.scoring.detect_cli import map_to_uint16, png16

    names = map_file_names(results)
    table = scores_csv(results, threshold, names)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for r, name in zip(results, names):
            archive.writestr(name, png16(map_to_uint16(r.anomaly_map)[0]))
        archive.writestr("scores.csv", table)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "scores.csv", table)
    atomic_write(folder / "maps.zip", buffer.getvalue())
    return [str(folder / "scores.csv"), str(folder / "maps.zip")]
