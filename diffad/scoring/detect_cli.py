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

Each image's map, overlay and row are written as soon as it is done, so memory does not grow with
the number of images. A rerun with the same settings after an interruption skips the finished
images and ends with the outputs an uninterrupted run writes: batches are fixed slices of the input
list and each image's noise is seeded by its name, so a batch is computed as it would have been.
Under `accelerate launch` each process runs a contiguous share of the batches; the main process
writes scores.csv.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import io
import json
import math
import sys
from pathlib import Path

from diffad.errors import ConfigError, DataError, OutputExistsError

SCORES = "scores.csv"
STATE = ".diffad-detect.json"  # the settings of the run that owns the folder, for resuming
PARTIAL = ".scores-{rank}.partial.csv"  # rows appended as images finish, one file per process

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
        "--mixed_precision",
        choices=("no", "bf16"),
        default="no",
        help="bf16: run the models under bfloat16 autocast (GPUs; maps and scores stay float32)",
    )
    parser.add_argument(
        "--overlay_max",
        type=float,
        default=5.0,
        help="top of the overlay colour range (a z-score, above 0) for a calibrated pipeline",
    )
    parser.add_argument(
        "--category",
        default=None,
        help="the images' category, for a model of several categories (diffad fit on a root) or a folder "
        "of one model per category (diffad fit --separate); default: the model's category-free fallback",
    )
    parser.add_argument(
        "--threshold",
        default=None,
        metavar="f1|fpr|VALUE",
        help="the score at and above which an image is defective: the model's saved f1 or fpr threshold, "
        "or a number (default: the model's default one)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs of an earlier run (a rerun with the same settings resumes without it)",
    )
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


def _settings(args: argparse.Namespace, inputs: list[tuple[Path, str]]) -> dict:
    """What decides the outputs: a rerun resumes only a run with the same."""
    listed = "\n".join(f"{path.resolve()}\t{name}" for path, name in inputs)
    return {
        "model": str(Path(args.model).resolve()),
        "inputs_sha256": hashlib.sha256(listed.encode()).hexdigest(),
        "num_inputs": len(inputs),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "overlay_max": args.overlay_max,
        "mixed_precision": args.mixed_precision,
        "threshold": args.threshold,
        "category": args.category,
    }


def _finished_rows(out: Path) -> dict[str, list[str]]:
    """Rows of the images whose outputs are complete, by map path: from scores.csv and from the rows
    each process appended as it went (a row cut short by a kill is not one)."""
    rows: dict[str, list[str]] = {}
    for file in [out / SCORES, *sorted(out.glob(PARTIAL.format(rank="*")))]:
        if not file.is_file():
            continue
        with file.open(newline="") as f:
            for row in csv.reader(f):
                if len(row) != len(CSV_FIELDS) or row[0] == CSV_FIELDS[0] or not row[-1].endswith(".png"):
                    continue
                if (out / row[-2]).is_file() and (out / row[-1]).is_file():
                    rows.setdefault(row[-2], row)
    return rows


def _check_output_dir(out: Path, settings: dict, targets: list[Path], overwrite: bool) -> bool:
    """True to resume the run that owns `out`; False to start afresh. Refuses another run's outputs."""
    owner = out / STATE
    if owner.is_file() and not overwrite:
        try:
            theirs = json.loads(owner.read_text())
        except ValueError:
            theirs = None
        if theirs == settings:
            return True
        raise OutputExistsError(
            f"{out} holds the outputs of a diffad detect run with other settings ({owner}); "
            "pass --overwrite to replace them or choose another --output_dir"
        )
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{existing[0]} exists ({len(existing)} outputs of an earlier run in {out}); "
            "pass --overwrite to replace them or choose another --output_dir"
        )
    return False


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from diffad.data.images import check_images, listed, load_image
    from diffad.detectors import (
        category_options,
        category_scope,
        detector_marker,
        load_detector,
        model_for_category,
        resolve_device,
    )
    from diffad.distributed import process_state, shard
    from diffad.files import atomic_write
    from diffad.report.evaluate import keyed_generator
    from diffad.scoring.thresholds import resolve

    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {args.batch_size}")
    if not (math.isfinite(args.overlay_max) and args.overlay_max > 0):
        raise ConfigError(
            f"--overlay_max must be a number above 0 (a z-score such as 5), not {args.overlay_max}"
        )
    model_dir = model_for_category(args.model, args.category)
    detector_marker(model_dir)  # a wrong folder is named before the images are read
    resolve_device(args.device)
    inputs = find_inputs(args.input)
    odd = check_images([path for path, _ in inputs])  # every broken file named before any work
    if odd:
        print(
            f"diffad detect: warning: {listed(odd, 'image of a size that detects poorly', 'images of sizes that detect poorly')}",
            file=sys.stderr,
        )
    out = Path(args.output_dir)
    targets = [out / SCORES] + [
        out / sub / f"{name}.png" for _, name in inputs for sub in ("maps", "overlays")
    ]
    settings = _settings(args, inputs)
    resume = _check_output_dir(out, settings, targets, args.overwrite)
    pipe = load_detector(model_dir, args.device)
    category = category_options(pipe, args.category)  # an unknown category lists the known ones
    scorer = getattr(pipe, "scorer", None)  # a reference detector has none, and is not calibrated
    calibrated = scorer is not None and scorer.config.calibration != "none"
    channels = int(getattr(pipe, "image_channels", 3))
    with category_scope(pipe, args.category):
        chosen = resolve(pipe, args.threshold, where=args.model)
    threshold = "" if chosen is None else repr(chosen[1])
    seeded = "generator" in inspect.signature(pipe.__call__).parameters
    state = process_state()
    state.wait_for_everyone()  # every process has checked OUT before the main one writes there
    if state.is_main_process and not resume:
        for stale in out.glob(PARTIAL.format(rank="*")):
            stale.unlink()
        atomic_write(out / STATE, json.dumps(settings, indent=1) + "\n")
    state.wait_for_everyone()
    done = _finished_rows(out) if resume else {}
    chunks = [range(s, min(s + args.batch_size, len(inputs))) for s in range(0, len(inputs), args.batch_size)]
    mine = [c for c in shard(chunks, state) if any(f"maps/{inputs[i][1]}.png" not in done for i in c)]
    device_type = torch.device(getattr(pipe, "device", "cpu")).type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")
    partial = out / PARTIAL.format(rank=state.process_index)
    if partial.is_file() and not partial.read_bytes().endswith(b"\n"):
        with partial.open("a") as f:  # a row cut short by a kill: the next one starts on a new line
            f.write("\n")
    show = state.is_main_process
    with tqdm(total=sum(map(len, mine)), desc="detect", unit="image", disable=not show) as bar, autocast:
        for chunk in mine:
            # The whole batch runs, finished images too: its others' maps are then those of a run
            # that was never interrupted (a map depends, to rounding, on its batch's shapes).
            batch = [inputs[i] for i in chunk]
            images = [load_image(path, channels) for path, _ in batch]
            options = {"batch_size": args.batch_size, "output_type": "pt", **category}
            if seeded:
                options["generator"] = [keyed_generator(f"{args.seed}/{name}") for _, name in batch]
            result = pipe(images, **options)
            for (path, name), image, amap, score in zip(
                batch, images, result.anomaly_maps, result.anomaly_scores
            ):
                if f"maps/{name}.png" not in done:
                    ov = (0.0, args.overlay_max) if calibrated else None
                    row = _write_image(out, path, name, image, amap.float().numpy(), float(score), ov, chosen)
                    _append_row(partial, row)
                bar.update(1)
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    finished = _finished_rows(out)
    missing = [name for _, name in inputs if f"maps/{name}.png" not in finished]
    if missing:
        raise DataError(
            f"the outputs of {len(missing)} images are missing (first {missing[0]}); run again to finish"
        )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(finished[f"maps/{name}.png"] for _, name in inputs)
    atomic_write(out / SCORES, text.getvalue())
    for file in out.glob(PARTIAL.format(rank="*")):
        file.unlink()
    earlier = sum(f"maps/{name}.png" in done for _, name in inputs)
    note = f" ({earlier} finished earlier)" if earlier else ""
    print(f"wrote {len(inputs)} maps and overlays{note} and {out / SCORES}")
    if chosen is None:
        print("no threshold: the model saved none (diffad fit saves them); give --threshold for verdicts")
    else:
        flagged = sum(finished[f"maps/{name}.png"][2] == "1" for _, name in inputs)
        print(f"{flagged} of {len(inputs)} images defective at the {chosen[0]} threshold {threshold}")
    return 0


def _write_image(
    out: Path, path: Path, name: str, image, anomaly_map, score: float, overlay_range, chosen
) -> list[str]:
    """The image's map and overlay, each atomically; returns its row. `overlay_range` None: the map's
    own; `chosen`: the (name, value) threshold of the verdict, or None."""
    from diffad.files import atomic_write
    from diffad.report.panels import overlay, png_bytes

    png, map_lo, map_hi = map_to_uint16(anomaly_map)
    ov_lo, ov_hi = overlay_range or (map_lo, map_hi)
    map_path, overlay_path = f"maps/{name}.png", f"overlays/{name}.png"
    atomic_write(out / map_path, png16(png))
    atomic_write(out / overlay_path, png_bytes(overlay(image, anomaly_map, vmin=ov_lo, vmax=ov_hi)))
    verdict = "" if chosen is None else str(int(score >= chosen[1]))
    threshold = "" if chosen is None else repr(chosen[1])
    values = (map_lo, map_hi, ov_lo, ov_hi)
    return [
        str(path),
        f"{score:.9g}",
        verdict,
        threshold,
        *(f"{v:.9g}" for v in values),
        map_path,
        overlay_path,
    ]


def _append_row(file: Path, row: list[str]) -> None:
    """One row, after the image's files: a row on disk means its files are whole."""
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(row)
    with file.open("a", newline="") as f:
        f.write(line.getvalue())
        f.flush()
