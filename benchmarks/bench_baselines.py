"""Quality and CPU speed of the reference detectors (PaDiM, PatchCore) on EfficientNet-Lite0 features.

    nice -n 10 python benchmarks/bench_baselines.py --data data/dagm_class1 --threads 2
    nice -n 10 python benchmarks/bench_baselines.py --data elpv --category mono --threads 2

Fits each detector on the good training images, scores the test split, prints a Markdown table (image
AUROC, pixel AUROC, AUPRO, ms per test image) and, with --json, writes the rows. `--set` overrides a
detector option, e.g. `--set patchcore.border_pad=0 --set patchcore.score_border=16`.

`data/dagm_class1` is DAGM 2007 class 1 in MVTec AD layout: docs/DATASETS.md says where to get it and how to lay it out.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from diffad.baselines import PaDiM, PatchCore
from diffad.data import load_pair, load_samples
from diffad.models.efficientnet import EfficientNetLiteFeatures

METHODS = {"padim": PaDiM, "patchcore": PatchCore}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder, or 'elpv'")
    p.add_argument("--category", default=None)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--channels", type=int, default=1, choices=(1, 3))
    p.add_argument("--methods", default="extractor,padim,patchcore")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_train", type=int, default=0, help="use only the first N good training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE")
    p.add_argument("--json", default=None, help="write the rows here")
    return p.parse_args(argv)


def overrides(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {name: {} for name in METHODS}
    for item in items:
        key, value = item.split("=", 1)
        method, option = key.split(".", 1)
        out[method][option] = json.loads(value)
    return out


def load_split(samples, split: str, resolution: int, channels: int):
    chosen = [s for s in samples if s.split == split]
    images, masks = [], []
    for s in tqdm(chosen, desc=f"load {split}", leave=False):
        image, mask = load_pair(s.image_path, s.mask_path, channels=channels, size=resolution)
        images.append(image)
        masks.append(mask[0])
    labels = np.array([s.label for s in chosen])
    has_masks = any(s.mask_path for s in chosen)
    return torch.stack(images), (torch.stack(masks).numpy() if has_masks else None), labels


def evaluate(scores, labels, maps=None, masks=None) -> dict:
    from diffad.metrics import compute_metrics

    return compute_metrics(scores, labels, maps, masks)


def timed_call(detector, images, batch_size: int):
    detector(images[:1])  # warm-up, and the one-time import of the pipeline's output class
    start = time.perf_counter()
    out = detector(images, output_type="np", batch_size=batch_size)
    return out, 1000 * (time.perf_counter() - start) / len(images)


def extractor_ms(extractor, images, batch_size: int) -> float:
    """Milliseconds per image of the feature extractor alone."""
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            extractor(images[i : i + batch_size])
    return 1000 * (time.perf_counter() - start) / len(images)


def reference_row(
    method: str, extractor, train, test, masks, labels, args, options: dict | None = None
) -> dict:
    """Fit `method` on `train`, score `test`: its metrics, ms per test image and fitting seconds."""
    detector = METHODS[method](extractor, resolution=args.resolution, **(options or {}))
    start = time.perf_counter()
    detector.fit([train], generator=torch.Generator().manual_seed(args.seed), batch_size=args.batch_size)
    fit_s = time.perf_counter() - start
    out, ms = timed_call(detector, test, args.batch_size)
    metrics = evaluate(out.anomaly_scores, labels, out.anomaly_maps if masks is not None else None, masks)
    return {**metrics, "ms_per_image": ms, "fit_s": fit_s, "train_images": len(train)}


def main(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    samples = load_samples(args.data, category=args.category)
    train, _, _ = load_split(samples, "train", args.resolution, args.channels)
    if args.max_train:
        train = train[: args.max_train]
    test, masks, labels = load_split(samples, "test", args.resolution, args.channels)
    extractor = EfficientNetLiteFeatures.from_wheel("lite0")
    options = overrides(args.set)
    rows = []
    for method in args.methods.split(","):
        if method == "extractor":
            ms = extractor_ms(extractor, test, args.batch_size)
            rows.append({"method": "extractor (Lite0, stages 2+4)", "ms_per_image": ms})
            continue
        name = method + "".join(f" {k}={v}" for k, v in options[method].items())
        rows.append(
            {
                "method": name,
                **reference_row(method, extractor, train, test, masks, labels, args, options[method]),
            }
        )
    print_table(rows, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


# (heading, row key, format) of the Markdown tables the benchmarks print.
COLUMNS = (
    ("image AUROC", "image_auroc", "{:.3f}"),
    ("pixel AUROC", "pixel_auroc", "{:.3f}"),
    ("AUPRO", "aupro", "{:.3f}"),
    ("ms / image", "ms_per_image", "{:.0f}"),
)


def markdown_table(rows: list[dict], first: tuple[str, ...], extra=()) -> str:
    """Rows as a Markdown table: the text columns `first`, then COLUMNS and `extra` (– where missing)."""
    columns = (*COLUMNS, *extra)
    lines = ["| " + " | ".join([*first, *(c[0] for c in columns)]) + " |"]
    lines.append("|" + "---|" * (len(first) + len(columns)))
    for r in rows:
        cells = [str(r[key]) for key in first]
        for _, key, pattern in columns:
            value = r.get(key)
            cells.append("–" if value is None or value != value else pattern.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict], args) -> None:
    print(f"\n{args.data} {args.category or ''} at {args.resolution} px, {args.threads} CPU thread(s)\n")
    print(markdown_table(rows, ("method",), extra=(("fit s", "fit_s", "{:.0f}"),)))


if __name__ == "__main__":
    main(parse_args())
