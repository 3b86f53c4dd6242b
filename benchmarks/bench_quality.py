"""The quality table: reference detectors and the diffusion detector's families, same data, same size.

    nice -n 10 python benchmarks/bench_quality.py \\
        --dataset dagm=data/dagm_class1:runs/dagm-fit --dataset elpv-mono=elpv/mono:runs/elpv-fit

Each `--dataset NAME=DATA[/CATEGORY]:MODEL` names a dataset (a folder, or `elpv/<category>`) and a
`diffad fit` folder trained on it. On each, at `--resolution` (images are loaded at that size, maps
and masks compared at it):

- PaDiM and PatchCore are fitted on the good training images and score the test split;
- the diffusion pipeline computes every residual once on the test split, and seven of its settings
  are read off them: the best reconstruction-residual setting (pixel, SSIM, latent), the best one
  with the reconstruction feature residual, the best fused with the feature Gaussians, the Gaussians
  alone, the best of the feature head without any reconstruction residual, the best fused with the
  feature head (these two need a fit with `--feature_head_steps`), and
  the one the fit chose overall (the simplest within 0.01 of the best; it may be the Gaussians alone). "Best" is
  taken from the fit's selection.json, i.e. measured on synthetic defects made on held-out good
  training images: no test image chooses anything.

Timings (ms per test image, `--threads` CPU threads): the extractor alone, each reference detector,
and the pipeline with and without the features. Prints a Markdown table; `--json` writes the rows.

`data/dagm_class1` is DAGM 2007 class 1 in MVTec AD layout: docs/DATASETS.md says where to get it and how to lay it out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baselines import extractor_ms, load_split, markdown_table, reference_row  # noqa: E402

from diffad.data import load_samples  # noqa: E402
from diffad.metrics import compute_metrics  # noqa: E402
from diffad.scoring.scorer import FITTED_MAPS, RESIDUALS  # noqa: E402
from diffad.training import selection  # noqa: E402
from diffad.training.calibration import SELECTION_FILE  # noqa: E402


# The diffusion rows: which weights each family may use (read off the fit's selection trials).
def _reconstruction(w: dict) -> bool:
    return any(w.get(k, 0) > 0 for k in RESIDUALS)


FAMILIES = {
    "diffusion, pixel residuals": lambda w: not any(w.get(k, 0) for k in ("feature", *FITTED_MAPS)),
    "diffusion, feature residuals": lambda w: (
        w.get("feature", 0) > 0 and not any(w.get(k, 0) for k in FITTED_MAPS)
    ),
    "diffusion, fused with feature Gaussians": lambda w: (
        w.get("feature_gaussian", 0) > 0 and not w.get("feature_head", 0) and _reconstruction(w)
    ),
    "feature Gaussians without diffusion": lambda w: (
        w.get("feature_gaussian", 0) > 0 and not w.get("feature_head", 0) and not _reconstruction(w)
    ),
    "feature head without diffusion (with or without Gaussians)": lambda w: (
        w.get("feature_head", 0) > 0 and not _reconstruction(w)
    ),
    "diffusion, fused with the feature head": lambda w: w.get("feature_head", 0) > 0 and _reconstruction(w),
}
TIMED_IMAGES = 32
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", required=True, metavar="NAME=DATA[/CATEGORY]:MODEL")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--references", default="padim,patchcore", help="reference detectors to run ('' for none)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def split_dataset(item: str) -> tuple[str, str, str | None, Path]:
    name, rest = item.split("=", 1)
    data, model = rest.rsplit(":", 1)
    category = None
    if data.startswith("elpv/"):
        data, category = "elpv", data.split("/", 1)[1]
    return name, data, category, Path(model)


def metrics_row(scores, labels, maps, masks) -> dict:
    metrics = compute_metrics(scores, labels, maps if masks is not None else None, masks)
    return {k: metrics[k] for k in METRICS}


def reference_rows(name, extractor, train, test, masks, labels, args) -> list[dict]:
    rows = []
    for method in filter(None, args.references.split(",")):
        row = reference_row(method, extractor, train, test, masks, labels, args)
        rows.append(
            {"dataset": name, "method": method} | {k: row[k] for k in (*METRICS, "ms_per_image", "fit_s")}
        )
    return rows


def timed_pipeline(pipe, images, weights: dict, deviation: str, args) -> float:
    pipe.scorer.register_to_config(**{f"{k}_weight": v for k, v in weights.items()}, deviation=deviation)
    batch = list(images[:TIMED_IMAGES])
    pipe(batch[:1], generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    pipe(batch, generator=torch.Generator().manual_seed(0), batch_size=args.batch_size)
    return 1000 * (time.perf_counter() - start) / len(batch)


def diffusion_rows(name, model: Path, test, masks, labels, args) -> list[dict]:
    from diffad import AnomalyDetectionPipeline

    record = json.loads((model / SELECTION_FILE).read_text())
    pipe = AnomalyDetectionPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    names = selection.candidates(pipe) + pipe.scorer.fitted_maps(in_use=False)
    chosen = {k: float(pipe.scorer.config[f"{k}_weight"]) for k in names}, pipe.scorer.config.deviation
    pipe.scorer.register_to_config(**{f"{k}_weight": 1.0 for k in names})
    start = time.perf_counter()
    residuals = pipe.residual_maps(list(test), generator=torch.Generator().manual_seed(args.seed))
    all_ms = 1000 * (time.perf_counter() - start) / len(test)
    rows = []
    families = {**FAMILIES, "diffusion pipeline as fitted (its own choice)": None}
    for family, where in families.items():
        trial = selection.best(record["trials"], where)
        if trial is None:
            continue
        maps = pipe.scorer.combine(residuals, weights=trial["weights"], deviation=trial["deviation"])
        scores = pipe.scorer.score(maps).numpy()
        maps = F.interpolate(maps[:, None], size=test.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        ms = timed_pipeline(pipe, test, trial["weights"], trial["deviation"], args)
        setting = (
            ", ".join(f"{k} {v:g}" for k, v in trial["weights"].items() if v) + f"; {trial['deviation']}"
        )
        rows.append(
            {
                "dataset": name,
                "method": f"{family} ({setting})",
                **metrics_row(scores, labels, maps.numpy(), masks),
            }
            | {"ms_per_image": ms, "synthetic_objective": trial["objective"]}
        )
    rows.append({"dataset": name, "method": "(every residual at once, one pass)", "ms_per_image": all_ms})
    print(f"{name}: the fit chose {chosen[0]}, deviation {chosen[1]}")
    return rows


def main(args) -> list[dict]:
    from diffad.models.efficientnet import EfficientNetLiteFeatures

    torch.set_num_threads(args.threads)
    extractor = EfficientNetLiteFeatures.from_wheel("lite0")
    rows = []
    for item in args.dataset:
        name, data, category, model = split_dataset(item)
        samples = load_samples(data, category=category)
        channels = 1
        train, _, _ = load_split(samples, "train", args.resolution, channels)
        test, masks, labels = load_split(samples, "test", args.resolution, channels)
        ms = extractor_ms(extractor, test, args.batch_size)
        rows.append({"dataset": name, "method": "extractor (Lite0)", "ms_per_image": ms})
        rows += reference_rows(name, extractor, train, test, masks, labels, args)
        rows += diffusion_rows(name, model, test, masks, labels, args)
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


def print_table(rows: list[dict], args) -> None:
    print(f"\nat {args.resolution} px, {args.threads} CPU thread(s)\n")
    print(markdown_table(rows, ("dataset", "method")))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main(parse_args())
