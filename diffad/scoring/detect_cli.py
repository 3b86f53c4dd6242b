"""`diffad detect`: anomaly maps, overlays and scores for image files or folders, from any folder
`diffad fit` writes (a saved pipeline, or a PaDiM / PatchCore detector).

Outputs under --output_dir. <name> is the file's stem for an image given as a file (`a/b.png` -> `b`),
and <folder>/<path inside it> for the images of a folder given (`shots/` holding `sub/b.png` ->
`shots/sub/b`):
- `maps/<name>.png`: the anomaly map at the image's size as a 16-bit grayscale PNG, scaled per image
  from [map_min, map_max] to [0, 65535]; `map = map_min + png / 65535 * (map_max - map_min)`.
- `overlays/<name>.png`: the image with the map in colour ("jet") over it, the colours spanning
  [overlay_min, overlay_max]: 0 to --overlay_max (z-scores) for a calibrated pipeline, else per image.
- `scores.csv`: image, score, is_defective, threshold, map_min, map_max, overlay_min, overlay_max,
  map_png, overlay_png. The score is the maximum of the map at the detector's working resolution,
  before the map is resized to the image's size, so map_max can differ from it slightly (see README,
  "Using a pipeline"). `is_defective` is 1 when the score is at or above the threshold (--threshold:
  the model's saved "f1" or "fpr" one, or a number; default: the one the model names), empty when
  the model saved none and none was given.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import io
import math
import sys
from pathlib import Path

from diffad.errors import ConfigError, DataError, OutputExistsError

CSV_FIELDS = (
    "image",
    "score",
    "is_defective",
    "threshold",
    "map_min",
    "map_max",
    "overlay_min",
    "overlay_max",
    "map_png",
    "overlay_png",
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="anomaly maps, overlays and scores for images, from a saved pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a folder written by diffad fit (any --method) or AnomalyDetectionPipeline.save_pretrained",
    )
    parser.add_argument(
        "--input", required=True, nargs="+", help="image files and/or folders (searched recursively)"
    )
    parser.add_argument("--output_dir", required=True, help="where maps/, overlays/ and scores.csv go")
    parser.add_argument(
        "--batch_size", type=int, default=8, help="images per forward pass (lower it if memory runs out)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (same seed, same maps)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--overlay_max",
        type=float,
        default=5.0,
        help="top of the overlay colour range (a z-score, above 0) for a calibrated pipeline",
    )
    parser.add_argument(
        "--threshold",
        default=None,
        metavar="f1|fpr|VALUE",
        help="the score at and above which an image is defective: the model's saved f1 or fpr threshold, "
        "or a number (default: the model's default one)",
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


def png16(array) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from diffad.data.images import check_images, listed, load_image
    from diffad.detectors import detector_marker, load_detector, resolve_device
    from diffad.files import atomic_write
    from diffad.report.panels import overlay, png_bytes
    from diffad.scoring.thresholds import resolve

    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {args.batch_size}")
    if not (math.isfinite(args.overlay_max) and args.overlay_max > 0):
        raise ConfigError(
            f"--overlay_max must be a number above 0 (a z-score such as 5), not {args.overlay_max}"
        )
    detector_marker(args.model)  # a wrong folder is named before the images are read
    resolve_device(args.device)
    inputs = find_inputs(args.input)
    odd = check_images([path for path, _ in inputs])  # every broken file named before any work
    if odd:
        print(
            f"diffad detect: warning: {listed(odd, 'image of a size that detects poorly', 'images of sizes that detect poorly')}",
            file=sys.stderr,
        )
    out = Path(args.output_dir)
    targets = [out / "scores.csv"]
    targets += [out / sub / f"{name}.png" for _, name in inputs for sub in ("maps", "overlays")]
    existing = [p for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise OutputExistsError(
            f"{existing[0]} exists ({len(existing)} outputs of an earlier run in {out}); "
            "pass --overwrite to replace them or choose another --output_dir"
        )
    pipe = load_detector(args.model, args.device)
    scorer = getattr(pipe, "scorer", None)  # a reference detector has none, and is not calibrated
    calibrated = scorer is not None and scorer.config.calibration != "none"
    channels = int(getattr(pipe, "image_channels", 3))
    options = {"batch_size": args.batch_size, "output_type": "pt"}
    if "generator" in inspect.signature(pipe.__call__).parameters:
        options["generator"] = torch.Generator().manual_seed(args.seed)
    chosen = resolve(pipe, args.threshold, where=args.model)
    threshold = "" if chosen is None else repr(chosen[1])
    rows = []
    with tqdm(total=len(inputs), desc="detect", unit="image") as bar:
        for start in range(0, len(inputs), args.batch_size):
            chunk = inputs[start : start + args.batch_size]
            images = [load_image(path, channels) for path, _ in chunk]
            result = pipe(images, **options)
            for (path, name), image, anomaly_map, score in zip(
                chunk, images, result.anomaly_maps, result.anomaly_scores
            ):
                anomaly_map = anomaly_map.numpy()
                png, map_lo, map_hi = map_to_uint16(anomaly_map)
                ov_lo, ov_hi = (0.0, args.overlay_max) if calibrated else (map_lo, map_hi)
                map_path, overlay_path = f"maps/{name}.png", f"overlays/{name}.png"
                atomic_write(out / map_path, png16(png))
                atomic_write(
                    out / overlay_path, png_bytes(overlay(image, anomaly_map, vmin=ov_lo, vmax=ov_hi))
                )
                verdict = "" if chosen is None else str(int(float(score) >= chosen[1]))
                values = (map_lo, map_hi, ov_lo, ov_hi)
                rows.append(
                    (str(path), f"{float(score):.9g}", verdict, threshold)
                    + tuple(f"{v:.9g}" for v in values)
                    + (map_path, overlay_path)
                )
                bar.update(1)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(rows)
    atomic_write(out / "scores.csv", text.getvalue())
    print(f"wrote {len(rows)} maps and overlays and {out / 'scores.csv'}")
    if chosen is None:
        print("no threshold: the model saved none (diffad fit saves them); give --threshold for verdicts")
    else:
        flagged = sum(row[2] == "1" for row in rows)
        print(f"{flagged} of {len(rows)} images defective at the {chosen[0]} threshold {threshold}")
    return 0
