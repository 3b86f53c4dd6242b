"""`diffad detect`: anomaly maps, overlays and scores for image files or folders, from a saved pipeline.

Outputs under --output_dir, for an input `a/b.png` (a file) or `<folder>/sub/b.png` (in a folder given):
- `maps/<name>.png`: the anomaly map at the image's size as a 16-bit grayscale PNG, scaled per image
  from [map_min, map_max] to [0, 65535]; `map = map_min + png / 65535 * (map_max - map_min)`.
- `overlays/<name>.png`: the image with the map in colour ("jet") over it, the colours spanning
  [overlay_min, overlay_max]: 0 to --overlay_max (z-scores) for a calibrated pipeline, else per image.
- `scores.csv`: image, score, map_min, map_max, overlay_min, overlay_max, map_png, overlay_png.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from diffad.errors import ConfigError, DataError, OutputExistsError

CSV_FIELDS = ("image", "score", "map_min", "map_max", "overlay_min", "overlay_max", "map_png", "overlay_png")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="anomaly maps, overlays and scores for images, from a saved pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="a folder written by AnomalyDetectionPipeline.save_pretrained"
    )
    parser.add_argument(
        "--input", required=True, nargs="+", help="image files and/or folders (searched recursively)"
    )
    parser.add_argument("--output_dir", required=True, help="where maps/, overlays/ and scores.csv go")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (same seed, same maps)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--overlay_max",
        type=float,
        default=5.0,
        help="top of the overlay colour range for a calibrated pipeline",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    parser.set_defaults(func=run)


def find_inputs(paths: list[str]) -> list[tuple[Path, str]]:
    """(image path, output name without extension) for every image in the given files and folders."""
    from diffad.data.samples import is_image_file

    found: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            images = sorted(p for p in given.rglob("*") if is_image_file(p))
            if not images:
                raise DataError(f"folder {given} holds no images (.png, .jpg, .bmp, .tif, ...)")
            found += [
                (p, (Path(given.resolve().name) / p.relative_to(given)).with_suffix("").as_posix())
                for p in images
            ]
        elif given.is_file():
            found.append((given, given.stem))
        else:
            raise DataError(f"input {given} does not exist; give image files or folders")
    names: dict[str, Path] = {}
    for path, name in found:
        if name in names:
            raise ConfigError(
                f"{names[name]} and {path} would both write {name}.png; detect them in separate runs"
            )
        names[name] = path
    return found


def map_to_uint16(anomaly_map):
    """The map scaled from its own [min, max] to uint16, with that range (see the module docstring)."""
    import numpy as np

    lo, hi = float(anomaly_map.min()), float(anomaly_map.max())
    scaled = (anomaly_map - lo) / (hi - lo) if hi > lo else np.zeros_like(anomaly_map)
    return np.round(scaled * 65535).astype(np.uint16), lo, hi


def _png16(array) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _load_pipeline(model: str, device: str | None):
    import torch

    from diffad.pipelines.pipeline_anomaly_detection import AnomalyDetectionPipeline

    if not (Path(model) / "model_index.json").is_file():
        raise ConfigError(
            f"{model} is not a saved pipeline (no model_index.json); give a save_pretrained folder"
        )
    try:
        pipe = AnomalyDetectionPipeline.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the pipeline in {model}: {err}") from err
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from diffad.data.images import image_to_tensor, open_image
    from diffad.files import atomic_write
    from diffad.report.panels import overlay, png_bytes

    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {args.batch_size}")
    inputs = find_inputs(args.input)
    out = Path(args.output_dir)
    targets = [out / "scores.csv"]
    targets += [out / sub / f"{name}.png" for _, name in inputs for sub in ("maps", "overlays")]
    existing = [p for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise OutputExistsError(
            f"{existing[0]} exists ({len(existing)} outputs of an earlier run in {out}); "
            "pass --overwrite to replace them or choose another --output_dir"
        )
    pipe = _load_pipeline(args.model, args.device)
    calibrated = pipe.scorer.config.calibration != "none"
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    with tqdm(total=len(inputs), desc="detect", unit="image") as bar:
        for start in range(0, len(inputs), args.batch_size):
            chunk = inputs[start : start + args.batch_size]
            images = [image_to_tensor(open_image(path), pipe.image_channels) for path, _ in chunk]
            result = pipe(images, generator=generator, output_type="pt", batch_size=args.batch_size)
            for (path, name), image, anomaly_map, score in zip(
                chunk, images, result.anomaly_maps, result.anomaly_scores
            ):
                anomaly_map = anomaly_map.numpy()
                png, map_lo, map_hi = map_to_uint16(anomaly_map)
                ov_lo, ov_hi = (0.0, args.overlay_max) if calibrated else (map_lo, map_hi)
                map_path, overlay_path = f"maps/{name}.png", f"overlays/{name}.png"
                atomic_write(out / map_path, _png16(png))
                atomic_write(
                    out / overlay_path, png_bytes(overlay(image, anomaly_map, vmin=ov_lo, vmax=ov_hi))
                )
                values = (float(score), map_lo, map_hi, ov_lo, ov_hi)
                rows.append((str(path), *(f"{v:.9g}" for v in values), map_path, overlay_path))
                bar.update(1)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(rows)
    atomic_write(out / "scores.csv", text.getvalue())
    print(f"wrote {len(rows)} maps and overlays and {out / 'scores.csv'}")
    return 0
