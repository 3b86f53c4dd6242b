"""Run a saved detector over the test split of a dataset and write metrics.json, scores.csv, report.html.

A detector is anything `load_detector` can load from a folder: a saved `AnomalyDetectionPipeline`
(model_index.json) or a reference detector of `diffad.baselines` (detector_config.json naming its
class). Each is called the same way — `detector(images, output_type="np", batch_size=B[, generator])`
returning `anomaly_maps`, `anomaly_scores` and `reconstructions` (None when it reconstructs nothing).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import platform
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffad.detectors import category_options, category_scope, load_detector, model_for_category
from diffad.errors import ConfigError, DataError, OutputExistsError
from diffad.files import atomic_write
from diffad.metrics.ranking import MetricWarning
from diffad.report.collect import Collector, case_candidates
from diffad.report.results import CategoryResults

if TYPE_CHECKING:
    import torch


class StreamedMetricsWarning(MetricWarning):
    """Pixel metrics come from streamed histograms: the maps do not fit --metrics_memory."""


DEFAULT_METRICS_MEMORY = "2GB"
# What the exact metrics hold per pixel at their peak: the map (4 bytes) and mask (1), the pooled
# scores of the category and of a defect type, and their temporaries (benchmarks/bench_scale.py
# measured 26 bytes a pixel on 400 maps of 256x256).
EXACT_BYTES_PER_PIXEL = 28
STREAMED_ERROR = "each figure within 1e-3 of the exact one"
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


def spread(items: list, limit: int | None) -> list:
    """At most `limit` items, evenly spaced, so every defect type of a sorted list keeps some."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """OUT, refusing a non-empty folder that an earlier `diffad evaluate` did not make (every process
    checks, so all stop together)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--output_dir {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not overwrite:
        raise OutputExistsError(
            f"{out} already holds files that diffad evaluate did not write; "
            "choose an empty or new --output_dir, or pass --overwrite to write beside them"
        )
    return out


def prepare_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Make OUT (see `check_output_dir`) and mark it as this command's."""
    out = check_output_dir(output_dir, overwrite)
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


def memory_bytes(value: str | int) -> int:
    """Bytes from 2GB, 1.5GiB, 500MB, 64kB or a plain number of bytes (--metrics_memory)."""
    text = str(value).strip().upper().replace("IB", "B")
    for suffix, factor in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10), ("B", 1)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)].strip(), factor
            break
    else:
        scale = 1
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not number >= 0 or not math.isfinite(number):
        raise ConfigError(
            f"--metrics_memory {value!r} is not a size; give e.g. 2GB, 500MB or 0 (always stream)"
        )
    return int(number * scale)


def exact_fits(category: str, count: int, size: int, budget: int, given: str | int) -> bool:
    """Whether `count` maps of size x size fit `budget` for the exact pixel metrics; warns if not."""
    needed = count * size * size * EXACT_BYTES_PER_PIXEL
    if needed <= budget:
        return True
    warnings.warn(
        f"{category}: the exact pixel metrics of {count} maps of {size}x{size} px would need about "
        f"{needed / 2**30:.2f} GB, over --metrics_memory {given}; they come from streamed histograms "
        f"instead ({STREAMED_ERROR})",
        StreamedMetricsWarning,
        stacklevel=2,
    )
    return False


def image_generator(seed: int, sample) -> torch.Generator:
    """A generator for one image, seeded from `seed` and the image's category, defect type and file
    name: its noise, and so its map, do not depend on which other images run or in what batches."""
    return keyed_generator(f"{seed}/{sample.category}/{sample.defect_type}/{Path(sample.image_path).name}")


def keyed_generator(key: str) -> torch.Generator:
    """A generator seeded from a hash of `key` (an image's seed and name)."""
    import torch

    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def call_detector(
    detector, images: list, batch_size: int, generators: list, reconstructions: bool = True, category=None
):
    kwargs: dict[str, Any] = {
        "output_type": "np",
        "batch_size": batch_size,
        **category_options(detector, category),
    }
    parameters = inspect.signature(detector.__call__).parameters
    if "generator" in parameters:
        kwargs["generator"] = generators
    if not reconstructions and "output_reconstructions" in parameters:
        kwargs["output_reconstructions"] = False
    return detector(images, **kwargs)


def _case_reconstructions(
    detector, dataset, samples, indices: list[int], batch_size: int, seed: int, category: str
):
    """Reconstructions of the images at `indices` only, with each image's own noise (so the same as a
    full run would have given): decoding every test image would cost more than the detection."""
    from diffad.report.panels import to_rgb8

    images = [dataset[i]["image"] for i in indices]
    generators = [image_generator(seed, samples[i]) for i in indices]
    output = call_detector(detector, images, batch_size, generators, category=category)
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
    keep_maps: bool = True,
    state=None,
) -> CategoryResults | None:
    """The detector over `samples` (one category's test images) at `resolution`, one batch at a time.
    `keep_maps`: keep every map for the exact pixel metrics; else stream them into histograms and
    keep only the maps the report may show. Under `accelerate launch` each process runs a contiguous
    share of the batches (the same batches as one process, so the same maps) and the main process
    gets everything; the others get None. A pipeline runs without decoding reconstructions where
    its residuals do not need them; those of the images the report may show are made afterwards."""
    from tqdm.auto import tqdm

    from diffad.data import AnomalyDataset
    from diffad.distributed import gather, process_state, shard
    from diffad.report.panels import to_rgb8

    state = state or process_state()
    dataset = AnomalyDataset(samples, resolution, channels=int(getattr(detector, "image_channels", 3)))
    collector = Collector(category, num_cases, keep_maps, any(s.mask_path for s in samples))
    empty = []  # defect masks with no defective pixel at this resolution
    batches = shard(
        [range(s, min(s + batch_size, len(dataset))) for s in range(0, len(dataset), batch_size)], state
    )
    show = progress and state.is_main_process
    with tqdm(
        total=sum(map(len, batches)), desc=f"evaluate {category}", unit="image", disable=not show
    ) as bar:
        for batch in batches:
            items = [dataset[i] for i in batch]
            images = [item["image"] for item in items]
            began = time.perf_counter()
            generators = [image_generator(seed, samples[i]) for i in batch]
            output = call_detector(
                detector, images, batch_size, generators, reconstructions=False, category=category
            )
            collector.seconds += time.perf_counter() - began
            scores = np.asarray(output.anomaly_scores, dtype=np.float64).reshape(-1)
            recons = output.reconstructions if output.reconstructions is not None else [None] * len(items)
            for i, item, image, amap, score, recon in zip(
                batch, items, images, output.anomaly_maps, scores, recons
            ):
                amap = np.asarray(amap, dtype=np.float32)
                mask = item["mask"][0].numpy().astype(np.uint8)
                if amap.shape != mask.shape:
                    raise DataError(
                        f"the detector returned a {amap.shape} map for {item['path']} ({resolution} px)"
                    )
                if samples[i].label == 1 and samples[i].mask_path and not mask.any():
                    empty.append(samples[i].mask_path)
                recon = to_rgb8(np.asarray(recon)) if recon is not None else None
                collector.add(i, samples[i], score, amap, mask, to_rgb8(image), recon)
            collector.prune()
            bar.update(len(items))
    parts = gather((collector, empty), state)
    if not state.is_main_process:
        return None
    empty = [path for _, some in parts for path in some]
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
    parts = [part for part, _ in parts]
    results = Collector.merged(parts).results()
    if (
        results.reconstructions is None
        and "output_reconstructions" in inspect.signature(detector.__call__).parameters
        and getattr(detector, "has_decoder", True)  # a feature first stage: input and map panels only
    ):
        indices = case_candidates(results.labels, results.scores, num_cases)
        results.reconstructions = _case_reconstructions(
            detector, dataset, samples, indices, batch_size, seed, category
        )
    from diffad.scoring.thresholds import resolve

    with category_scope(detector, category):  # a model of many categories: this one's threshold
        results.saved_threshold = resolve(detector)
    return results


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
    metrics_memory: str | int = DEFAULT_METRICS_MEMORY,
) -> dict[str, Any] | None:
    """Evaluate the detector in `model` on the test split of `data` (every category, or `category`)
    and write OUT/metrics.json, OUT/scores.csv and OUT/report.html. Returns the metrics document.

    Pixel metrics are exact while a category's maps fit `metrics_memory` ("2GB", "500MB", bytes);
    past it they come from streamed histograms (diffad.metrics.streamed), with a warning, and the
    memory no longer grows with the number of images. Under `accelerate launch` every process runs a
    share of the images and the main process writes the outputs; the others return None."""
    import torch

    from diffad import __version__
    from diffad.data import DataWarning, load_samples
    from diffad.data.images import check_images, listed
    from diffad.detectors import resolve_device
    from diffad.distributed import process_state
    from diffad.metrics import AUPRO_MODES
    from diffad.report.outputs import write_outputs
    from diffad.report.results import summarize

    if batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {batch_size}")
    if aupro not in AUPRO_MODES:
        raise ConfigError(f"--aupro must be one of {AUPRO_MODES}, got {aupro!r}")
    if resolution is not None and resolution < 8:
        raise ConfigError(f"--resolution must be at least 8, got {resolution}")
    if num_cases < 0:
        raise ConfigError(f"--cases must be 0 or more (best and worst cases shown), got {num_cases}")
    budget = memory_bytes(metrics_memory)
    device = resolve_device(device)  # a missing GPU is one line, before anything is written
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
    state = process_state()
    check_output_dir(output_dir, overwrite)
    state.wait_for_everyone()  # every process has checked OUT before the main one writes there
    # The main process makes OUT (and removes it if the run fails before writing anything there).
    opened = output_folder if state.is_main_process else lambda out, _: nullcontext(Path(out))
    with opened(output_dir, overwrite) as out:
        loaded: dict[Path, Any] = {}
        results, summaries, detectors = [], [], {}
        for name in sorted({s.category for s in samples}):
            folder = model_for_category(model_dir, name)
            if folder not in loaded:
                loaded[folder] = load_detector(folder, device)
            detector = loaded[folder]
            size = resolution or detector_resolution(detector)
            chosen = spread([s for s in samples if s.category == name], limit)
            exact = exact_fits(name, len(chosen), size, budget, metrics_memory)
            got = run_category(
                detector, name, chosen, size, batch_size, seed, progress, num_cases, exact, state
            )
            detectors[name] = {**detector_settings(detector, folder), "resolution": size}
            if got is not None:  # the main process: summarise, then let the maps go but the cases'
                summaries.append(summarize(got, aupro))
                results.append(got.cases_only(case_candidates(got.labels, got.scores, num_cases)))
        if not state.is_main_process:
            return None
        settings = {
            "data": str(data) if str(data) == "elpv" else str(Path(data).resolve()),
            "category": category,
            "split": "test",
            "limit": limit,
            "batch_size": batch_size,
            "seed": seed,
            "metrics_memory": budget,
            "num_processes": state.num_processes,
            "device": str(next(iter(loaded.values())).device),
            "detectors": detectors,
            "versions": {
                "diffad": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }
        facts = [f"model: {model_dir.resolve()}", f"data: {settings['data']}"]
        return write_outputs(
            out, results, settings, aupro=aupro, num_cases=num_cases, facts=facts, summaries=summaries
        )
