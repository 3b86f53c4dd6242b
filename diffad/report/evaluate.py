"""Run a saved detector over the test split of a dataset and write metrics.json, scores.csv, report.html.

A detector is anything `load_detector` can load from a folder: a saved `AnomalyDetectionPipeline`
(model_index.json) or a reference detector of `diffad.baselines` (detector_config.json naming its
class). Each is called the same way — `detector(images, output_type="np", batch_size=B[, generator])`
returning `anomaly_maps`, `anomaly_scores` and `reconstructions` (None when it reconstructs nothing).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffad.detectors import LOADERS, load_detector
from diffad.errors import ConfigError, DataError, OutputExistsError
from diffad.files import atomic_write
from diffad.report.results import CategoryResults

if TYPE_CHECKING:
    import torch

MARKER = ".diffad-evaluate"  # written first into OUT, so a rerun knows the folder is its own
DEFAULT_RESOLUTION = 256


def detector_resolution(detector) -> int:
    resolution = getattr(detector, "resolution", None)
    if resolution is None:
        resolution = dict(getattr(detector, "config", {}) or {}).get("resolution", DEFAULT_RESOLUTION)
    scorer = getattr(detector, "scorer", None)
    if scorer is not None and scorer.fitted_maps(in_use=False):
        # The feature maps see inputs at their own (larger) size; the pipeline resizes the rest.
        resolution = max(int(resolution), scorer.feature_gaussian_resolution)
    return int(resolution)


def detector_settings(detector, folder: Path) -> dict[str, Any]:
    """What, besides the data, decides the maps: the detector's class and configuration."""
    settings: dict[str, Any] = {"model": str(folder.resolve()), "detector": type(detector).__name__}
    scorer = getattr(detector, "scorer", None)
    if scorer is not None:  # a pipeline: the scorer holds the detection settings
        settings["scorer"] = {k: v for k, v in dict(scorer.config).items() if not k.startswith("_")}
        settings["components"] = {
            name: type(module).__name__ for name, module in detector.components.items() if module is not None
        }
        settings["scheduler"] = {
            k: v for k, v in dict(detector.scheduler.config).items() if not k.startswith("_")
        }
    else:
        settings["config"] = dict(getattr(detector, "config", {}) or {})
    return settings


def model_for_category(model_dir: Path, category: str) -> Path:
    """`model_dir/<category>` when it holds a saved detector (one model per category), else `model_dir`."""
    sub = model_dir / category
    return sub if sub.is_dir() and any((sub / marker).is_file() for marker in LOADERS) else model_dir


def spread(items: list, limit: int | None) -> list:
    """At most `limit` items, evenly spaced, so every defect type of a sorted list keeps some."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def prepare_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Make OUT, refusing a non-empty folder that an earlier `diffad evaluate` did not make."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--output_dir {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not overwrite:
        raise OutputExistsError(
            f"{out} already holds files that diffad evaluate did not write; "
            "choose an empty or new --output_dir, or pass --overwrite to write beside them"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / MARKER, "written by diffad evaluate; its reruns may replace the outputs here\n")
    return out


@contextmanager
def output_folder(output_dir: str | os.PathLike, overwrite: bool):
    """`prepare_output_dir`'s folder; if the run fails, a folder it made holding only the marker goes."""
    out = Path(output_dir)
    fresh = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    out = prepare_output_dir(out, overwrite)
    try:
        yield out
    except BaseException:
        marker_only = (out / MARKER).is_file() and [p.name for p in out.iterdir()] == [MARKER]
        if fresh and marker_only:
            (out / MARKER).unlink()
            out.rmdir()
        raise


def image_generator(seed: int, sample) -> torch.Generator:
    """A generator for one image, seeded from `seed` and the image's category, defect type and file
    name: its noise, and so its map, do not depend on which other images run or in what batches."""
    import torch

    key = f"{seed}/{sample.category}/{sample.defect_type}/{Path(sample.image_path).name}"
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def call_detector(detector, images: list, batch_size: int, generators: list, reconstructions: bool = True):
    kwargs: dict[str, Any] = {"output_type": "np", "batch_size": batch_size}
    parameters = inspect.signature(detector.__call__).parameters
    if "generator" in parameters:
        kwargs["generator"] = generators
    if not reconstructions and "output_reconstructions" in parameters:
        kwargs["output_reconstructions"] = False
    return detector(images, **kwargs)


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


def _case_reconstructions(detector, dataset, samples, indices: list[int], batch_size: int, seed: int):
    """Reconstructions of the images at `indices` only, with each image's own noise (so the same as a
    full run would have given): decoding every test image would cost more than the detection."""
    from diffad.report.panels import to_rgb8

    images = [dataset[i]["image"] for i in indices]
    generators = [image_generator(seed, samples[i]) for i in indices]
    output = call_detector(detector, images, batch_size, generators)
    if output.reconstructions is None:  # a first stage without a decoder: the report shows input and map
        return None
    return {i: to_rgb8(np.asarray(r)) for i, r in zip(indices, output.reconstructions)}


def run_category(
    detector,
    category: str,
    samples: list,
    resolution: int,
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    num_cases: int = 4,
) -> CategoryResults:
    """The detector over `samples` (one category's test images) at `resolution`, one batch at a time.
    A pipeline runs without decoding reconstructions where its residuals do not need them; those of
    the images the report may show (`num_cases`) are made afterwards."""
    from tqdm.auto import tqdm

    from diffad.data import AnomalyDataset
    from diffad.report.panels import to_rgb8

    dataset = AnomalyDataset(samples, resolution, channels=int(getattr(detector, "image_channels", 3)))
    maps, masks, scores, inputs, reconstructions = [], [], [], [], []
    seconds = 0.0
    with tqdm(total=len(dataset), desc=f"evaluate {category}", unit="image", disable=not progress) as bar:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = [item["image"] for item in items]
            began = time.perf_counter()
            generators = [image_generator(seed, samples[start + i]) for i in range(len(items))]
            output = call_detector(detector, images, batch_size, generators, reconstructions=False)
            seconds += time.perf_counter() - began
            batch_maps = [np.asarray(m, dtype=np.float32) for m in output.anomaly_maps]
            for item, amap in zip(items, batch_maps):
                if amap.shape != tuple(item["mask"].shape[-2:]):
                    raise DataError(
                        f"the detector returned a {amap.shape} map for {item['path']} ({resolution} px)"
                    )
            maps += batch_maps
            scores += np.asarray(output.anomaly_scores, dtype=np.float64).reshape(-1).tolist()
            masks += [item["mask"][0].numpy().astype(np.uint8) for item in items]
            inputs += [to_rgb8(image) for image in images]
            if output.reconstructions is not None:
                reconstructions += [to_rgb8(np.asarray(r)) for r in output.reconstructions]
            bar.update(len(items))
    empty = [s.mask_path for s, m in zip(samples, masks) if s.label == 1 and s.mask_path and not m.any()]
    if empty:
        from diffad.data import DataWarning
        from diffad.data.images import listed

        warnings.warn(
            listed(
                empty,
                *(
                    f"defect {m} with no defective pixel at {resolution} px ({category})"
                    for m in ("mask", "masks")
                ),
            )
            + ": those images count for the image metrics only; fix the masks (or use a larger --resolution)",
            DataWarning,
            stacklevel=2,
        )
    recon: list | dict | None = reconstructions or None
    if recon is None and "output_reconstructions" in inspect.signature(detector.__call__).parameters:
        labels = np.array([s.label for s in samples])
        indices = case_candidates(labels, np.array(scores), num_cases)
        recon = _case_reconstructions(detector, dataset, samples, indices, batch_size, seed)
    from diffad.scoring.thresholds import resolve

    return CategoryResults(
        saved_threshold=resolve(detector),
        category=category,
        paths=[s.image_path for s in samples],
        labels=np.array([s.label for s in samples]),
        defect_types=[s.defect_type for s in samples],
        scores=np.array(scores),
        maps=maps,
        masks=masks if any(s.mask_path for s in samples) else None,
        inputs=inputs,
        reconstructions=recon,
        seconds=seconds,
    )


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    category: str | None = None,
    resolution: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    seed: int = 0,
    aupro: str = "exact",
    device: str | None = None,
    overwrite: bool = False,
    num_cases: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the detector in `model` on the test split of `data` (every category, or `category`)
    and write OUT/metrics.json, OUT/scores.csv and OUT/report.html. Returns the metrics document."""
    import torch

    from diffad import __version__
    from diffad.data import DataWarning, load_samples
    from diffad.data.images import check_images, listed
    from diffad.metrics import AUPRO_MODES
    from diffad.report.outputs import write_outputs

    if batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {batch_size}")
    if aupro not in AUPRO_MODES:
        raise ConfigError(f"--aupro must be one of {AUPRO_MODES}, got {aupro!r}")
    if resolution is not None and resolution < 8:
        raise ConfigError(f"--resolution must be at least 8, got {resolution}")
    if num_cases < 0:
        raise ConfigError(f"--cases must be 0 or more (best and worst cases shown), got {num_cases}")
    model_dir = Path(model)
    samples = load_samples(data, category=category, split="test")
    if not samples:
        raise DataError(f"{data} has no test images" + (f" in category {category!r}" if category else ""))
    odd = check_images([s.image_path for s in samples])  # every broken file named, before any work
    if odd:
        warnings.warn(
            listed(odd, "image of a size that detects poorly", "images of sizes that detect poorly"),
            DataWarning,
            stacklevel=2,
        )
    with output_folder(output_dir, overwrite) as out:
        loaded: dict[Path, Any] = {}
        results, detectors = [], {}
        for name in sorted({s.category for s in samples}):
            folder = model_for_category(model_dir, name)
            if folder not in loaded:
                loaded[folder] = load_detector(folder, device)
            detector = loaded[folder]
            size = resolution or detector_resolution(detector)
            chosen = spread([s for s in samples if s.category == name], limit)
            results.append(run_category(detector, name, chosen, size, batch_size, seed, progress, num_cases))
            detectors[name] = {**detector_settings(detector, folder), "resolution": size}
        settings = {
            "data": str(data) if str(data) == "elpv" else str(Path(data).resolve()),
            "category": category,
            "split": "test",
            "limit": limit,
            "batch_size": batch_size,
            "seed": seed,
            "device": str(next(iter(loaded.values())).device),
            "detectors": detectors,
            "versions": {
                "diffad": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }
        facts = [f"model: {model_dir.resolve()}", f"data: {settings['data']}"]
        return write_outputs(out, results, settings, aupro=aupro, num_cases=num_cases, facts=facts)
