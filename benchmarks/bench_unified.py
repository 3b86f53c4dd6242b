"""One model for many categories (ADer's multi-class protocol) against one model per category.

Builds a root of several categories (links to the images, never copies) from MVTec-layout category
folders and ELPV, then fits and evaluates each detector twice: "separate" (`diffad fit --separate`,
one model per category) and "unified" (`diffad fit` on the root, one model for all; the diffusion
detector also class-conditional). Prints, per category and their mean, image AUROC, pixel AUROC,
AUPRO and mAD (ADer's names: mAUROC_sp_max, mAUROC_px, mAUPRO_px, mAD), fit time and size on disk.

    python benchmarks/bench_unified.py --work /tmp/bu \
        --dataset dagm=data/dagm_class1 --dataset ksdd=data/kolektorsdd \
        --dataset tire=data/mvtec3d_tire --dataset mono=elpv:mono --dataset poly=elpv:poly

Every setting is the fit's own (its choice on synthetic defects); no test image chooses anything.
`--train_limit` keeps a seeded subset of each category's good training images, the same for every
detector; `--test_limit` evaluates an evenly spread subset of each category's test images. A rerun
with the same --work reuses the fits and evaluations already done (results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "padim": ["--method", "padim"],
    "patchcore": ["--method", "patchcore"],
    "diffusion": [],
    "diffusion-cond": ["--class_conditional"],
    # Each category's covariances shrunk towards those pooled over the categories (152: Lite0's dimension).
    "diffusion-cond-pooled": ["--class_conditional", "--category_prior", "152"],
    # ... by a weight estimated from each category's images.
    "diffusion-cond-auto": ["--class_conditional", "--category_shrinkage", "auto"],
}
METRICS = (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO"), ("mad", "mAD"))


def link_category(name: str, source: str, root: Path, train_limit: int, seed: int) -> None:
    """root/name in MVTec layout, its files symbolic links to `source`'s (a category folder or elpv:CAT)."""
    from diffad.data import load_samples

    if (root / name).is_dir():
        return
    data, category = ("elpv", source.split(":", 1)[1]) if source.startswith("elpv:") else (source, None)
    samples = load_samples(data, category)
    train = [s for s in samples if s.split == "train" and s.label == 0]
    if train_limit and len(train) > train_limit:
        train = sorted(random.Random(f"{seed}/{name}").sample(train, train_limit), key=lambda s: s.image_path)
    tmp = root / f".{name}.tmp"
    for s in train + [s for s in samples if s.split == "test"]:
        folder = tmp / ("train/good" if s.split == "train" else f"test/{s.defect_type}")
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / Path(s.image_path).name
        image.symlink_to(Path(s.image_path).resolve())
        if s.mask_path:
            masks = tmp / "ground_truth" / s.defect_type
            masks.mkdir(parents=True, exist_ok=True)
            (masks / f"{image.stem}_mask.png").symlink_to(Path(s.mask_path).resolve())
    os.replace(tmp, root / name)


def size_mb(folder: Path) -> float:
    """What detection loads: a pipeline's model_index.json and the components it names (not stage 1's
    own folder or the checkpoints kept to resume), a reference detector's folder; summed over the
    per-category folders of separate models."""
    index = folder / "model_index.json"
    if index.is_file():
        parts = [index] + [
            folder / k for k, v in json.loads(index.read_text()).items() if isinstance(v, list)
        ]
    elif (folder / "detector_config.json").is_file():
        parts = [folder]
    else:
        return sum(size_mb(sub) for sub in folder.iterdir() if sub.is_dir())
    files = [p for part in parts for p in ([part] if part.is_file() else part.rglob("*")) if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def run(args, results: dict, key: str, detector: str, mode: str) -> None:
    from diffad.cli import main

    if key in results:
        return
    work, root = Path(args.work), Path(args.work) / "root"
    model = work / "models" / key
    fit = ["fit", "--data", str(root), "--output_dir", str(model), "--resolution", str(args.resolution)]
    fit += ["--seed", str(args.seed), *RUNS[detector]]
    if mode == "separate":
        fit += ["--separate"]
    if detector.startswith("diffusion"):
        minutes = args.unified_minutes if mode == "unified" else args.separate_minutes
        fit += ["--max_minutes", str(minutes), "--validation_steps", "0", "--checkpointing_steps", "100000"]
    done = model / ".bench-fit-seconds"
    if not done.is_file():
        began = time.monotonic()
        if main(fit + (["--overwrite"] if model.exists() else [])) != 0:
            raise SystemExit(f"fit failed: {' '.join(fit)}")
        done.write_text(f"{time.monotonic() - began:.1f}\n")
    seconds = float(done.read_text())
    out = work / "eval" / key
    evaluate = [
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(root),
        "--output_dir",
        str(out),
        "--overwrite",
    ]
    evaluate += ["--cases", "2"] + (["--limit", str(args.test_limit)] if args.test_limit else [])
    if main(evaluate) != 0:
        raise SystemExit(f"evaluate failed: {' '.join(evaluate)}")
    metrics = json.loads((out / "metrics.json").read_text())
    results[key] = {
        "detector": detector,
        "mode": mode,
        "fit_seconds": round(seconds, 1),
        "size_mb": round(size_mb(model), 2),
        "per_category": {c: {k: m.get(k) for k, _ in METRICS} for c, m in metrics["per_category"].items()},
        "mean": {k: metrics.get(k) for k, _ in METRICS},
        "seconds_per_image": metrics.get("seconds_per_image"),
    }
    tmp = work / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, work / "results.json")


def fmt(value) -> str:
    return "  –  " if value is None else f"{100 * value:5.1f}"


def table(results: dict) -> str:
    lines = []
    categories = sorted({c for r in results.values() for c in r["per_category"]})
    head = "| detector | mode | " + " | ".join(categories) + " | mean | fit s | MB | s/img |"
    lines += [
        "Each cell: " + " / ".join(label for _, label in METRICS),
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in results.values():
        cells = [" / ".join(fmt(r["per_category"].get(c, {}).get(k)) for k, _ in METRICS) for c in categories]
        mean = " / ".join(fmt(r["mean"][k]) for k, _ in METRICS)
        spi = r.get("seconds_per_image") or 0
        lines.append(
            f"| {r['detector']} | {r['mode']} | " + " | ".join(cells)
            + f" | **{mean}** | {r['fit_seconds']:.0f} | {r['size_mb']:.1f} | {spi:.3f} |"
        )  # fmt: skip
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for the root of links, the models and the results")
    p.add_argument("--dataset", action="append", required=True, help="NAME=FOLDER or NAME=elpv:mono|poly")
    p.add_argument("--detectors", default=",".join(RUNS), help="some of " + ", ".join(RUNS))
    p.add_argument("--modes", default="separate,unified")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--train_limit", type=int, default=0, help="good training images per category (0: all)")
    p.add_argument("--test_limit", type=int, default=0, help="test images per category (0: all)")
    p.add_argument(
        "--unified_minutes", type=float, default=10.0, help="--max_minutes of a unified diffusion fit"
    )
    p.add_argument("--separate_minutes", type=float, default=2.0, help="--max_minutes of each separate one")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    (work / "root").mkdir(parents=True, exist_ok=True)
    for item in args.dataset:
        name, _, source = item.partition("=")
        link_category(name, source, work / "root", args.train_limit, args.seed)
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for detector in args.detectors.split(","):
        for mode in args.modes.split(","):
            if detector.startswith("diffusion-cond") and mode == "separate":
                continue  # one category: nothing to condition on
            run(args, results, f"{detector}-{mode}", detector, mode)
            print(table(results), flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
