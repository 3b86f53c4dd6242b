"""Quality and speed of the segmentation head: residual map alone, head alone, head fused with the map.

    nice -n 10 python benchmarks/bench_head.py --data data/dagm_class1 \
        --residual_model RUN/residual --head_model RUN/head --synthetic cutpaste --json head.json

`--head_model` is a pipeline folder with a `segmentation_head` (train_seg.py); `--residual_model` the
pipeline the residual-only row uses (by default the same folder with its head ignored; give a pipeline
trained for the same total CPU time for a fair comparison). Both are calibrated per pixel on
--calibration_images good training images unless already calibrated. Images are scored at the
pipelines' working resolution; masks are resized to it. Prints a Markdown table (image AUROC, pixel
AUROC, AUPRO) per test set: the real test split, and with --synthetic METHOD the good test images
with that synthetic defect added to one copy of each. --timing adds the head's share of detection time.

The comparison behind the segmentation head's figures (128 px, 1 thread each, `nice -n 10`, wall minutes below; CPU
seconds measured with /usr/bin/time), for DATA = --data data/dagm_class1 or --data elpv
--category mono, C = --resolution 128 --channels 1 --train_batch_size 8 --max_train_steps 100000
--checkpointing_steps 0 --validation_steps 0 --seed 0 --preset tiny --learning_rate 5e-4:

    python train_vae.py DATA C --output_dir R/vae --max_minutes 3
    python train_unet.py DATA C --max_timestep 500 --vae R/vae --output_dir R/unet --max_minutes 3
    cp -r R/unet R/head && python train_seg.py DATA --model R/head --output_dir R/head_run --seed 0 \
        --head_stride 2 --pool_size 160 --pool_epochs 3 --max_minutes 4      # (--pool_epochs 6, 12 min: long)
    cp -r R/unet R/residual && python train_unet.py DATA C --max_timestep 500 --vae R/vae \
        --output_dir R/residual --resume_from_checkpoint latest --max_minutes 4   # repeated to match CPU time

`data/dagm_class1` is DAGM 2007 class 1 in MVTec AD layout: docs/DATASETS.md says where to get it and how to lay it out.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from diffad import AnomalyDetectionPipeline
from diffad.metrics import compute_metrics
from diffad.training.seg_stage import HEAD_NAME


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder, or 'elpv'")
    p.add_argument("--category", default=None)
    p.add_argument("--head_model", required=True, help="pipeline folder with a segmentation_head")
    p.add_argument("--residual_model", default=None, help="pipeline for the residual-only row")
    p.add_argument("--fusion", type=float, nargs="*", default=[0.1, 0.3], help="residual weights to try")
    p.add_argument("--synthetic", nargs="*", default=[], help="synthesis methods for the unseen-defect test")
    p.add_argument("--calibration_images", type=int, default=64)
    p.add_argument("--max_test", type=int, default=0, help="score at most N test images (0: all)")
    p.add_argument("--timing", action="store_true", help="measure the head's share of detection time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the rows here")
    return p.parse_args(argv)


def load(folder: str, samples, channels: int, resolution: int, count: int, seed: int):
    pipe = AnomalyDetectionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if pipe.scorer.config.calibration == "none":
        good = load_set(samples[:count], resolution, channels)[0]
        pipe.calibrate(good, generator=torch.Generator().manual_seed(seed), mode="per_pixel")
    return pipe


def load_set(samples, resolution: int, channels: int):
    from diffad.data import AnomalyDataset

    dataset = AnomalyDataset(samples, resolution, channels=channels)
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"][0] for it in items])
    labels = np.array([it["label"] for it in items])
    return images, masks, labels


def detect(pipe, images: torch.Tensor, seed: int, batch_size: int, use_head: bool = False):
    """The pipeline's maps (N, R, R) and reconstructions (N, C, R, R) in [-1, 1] at working size; without
    `use_head` the head is set aside, so the maps are the calibrated residual maps."""
    head = pipe.segmentation_head
    if not use_head:
        pipe.register_modules(segmentation_head=None)
    try:
        out = pipe(
            images, output_type="pt", generator=torch.Generator().manual_seed(seed), batch_size=batch_size
        )
    finally:
        pipe.register_modules(segmentation_head=head)
    return out.anomaly_maps.float(), out.reconstructions.float() * 2 - 1


def head_logits(head, images, recons, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                head(images[i : i + batch_size], recons[i : i + batch_size])[:, 0]
                for i in range(0, len(images), batch_size)
            ]
        )


def metrics_row(name: str, maps: torch.Tensor, masks, labels, scorer) -> dict:
    scores = scorer.score(maps)
    pixel = masks is not None and labels.any()
    m = compute_metrics(scores, labels, maps.numpy() if pixel else None, masks.numpy() if pixel else None)
    return {"map": name, **{k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")}}


def evaluate(title, images, masks, labels, residual_pipe, head_pipe, fusion, args) -> list[dict]:
    head = head_pipe.segmentation_head
    residual_maps, _ = detect(residual_pipe, images, args.seed, args.batch_size)
    own_maps, recons = detect(head_pipe, images, args.seed, args.batch_size)
    logits = head_logits(head, images, recons, args.batch_size)
    rows = [metrics_row("residual map", residual_maps, masks, labels, residual_pipe.scorer)]
    if residual_pipe is not head_pipe:
        rows.append(metrics_row("residual map (head's pipeline)", own_maps, masks, labels, head_pipe.scorer))
    rows.append(metrics_row("head", logits, masks, labels, head_pipe.scorer))
    for w in fusion:
        rows.append(
            metrics_row(f"head + {w:g} x residual", logits + w * own_maps, masks, labels, head_pipe.scorer)
        )
    for r in rows:
        r["set"] = title
    return rows


def synthetic_set(images: torch.Tensor, method: str, seed: int):
    """Each good image once as it is and once with a `method` defect."""
    from diffad.synthesis import synthesize

    defect = synthesize(images, method, torch.Generator().manual_seed(seed))
    all_images = torch.cat([images, defect.image])
    masks = torch.cat([torch.zeros(len(images), *images.shape[-2:]), defect.mask[:, 0]])
    labels = np.array([0] * len(images) + [1] * len(images))
    return all_images, masks, labels


def timing(pipe, images: torch.Tensor, batch_size: int, repeats: int = 2) -> dict:
    """Milliseconds per image: detection without the head, the head alone, and detection with the head
    (the last minus the first is noisier on a shared machine than the head timed alone)."""
    x = images[:batch_size]
    head = pipe.segmentation_head

    def per_image(fn) -> float:
        fn()  # warm up
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1e3 * (time.perf_counter() - t0) / (repeats * len(x))

    recons = detect(pipe, x, 0, batch_size)[1]
    t_detect = per_image(lambda: detect(pipe, x, 0, batch_size))
    t_head = per_image(lambda: head_logits(head, x, recons, batch_size))
    t_full = per_image(lambda: detect(pipe, x, 0, batch_size, use_head=True))
    return {"detect_ms": t_detect, "head_ms": t_head, "with_head_ms": t_full, "head_share": t_head / t_detect}


def main(argv=None) -> list[dict]:
    from diffad.data import load_samples

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    head_probe = AnomalyDetectionPipeline.from_pretrained(args.head_model)
    if head_probe.segmentation_head is None:
        raise SystemExit(f"{args.head_model} has no {HEAD_NAME}: train one with train_seg.py")
    channels, resolution = head_probe.image_channels, head_probe.resolution
    train = [s for s in load_samples(args.data, args.category, split="train") if s.label == 0]
    test = load_samples(args.data, args.category, split="test")
    if args.max_test:
        rng = np.random.default_rng(args.seed)
        test = [test[i] for i in sorted(rng.choice(len(test), min(args.max_test, len(test)), replace=False))]
    head_pipe = load(args.head_model, train, channels, resolution, args.calibration_images, args.seed)
    residual_pipe = head_pipe
    if args.residual_model:
        residual_pipe = load(
            args.residual_model, train, channels, resolution, args.calibration_images, args.seed
        )

    images, masks, labels = load_set(test, resolution, channels)
    has_masks = any(s.mask_path for s in test)
    rows = evaluate(
        "test split",
        images,
        masks if has_masks else None,
        labels,
        residual_pipe,
        head_pipe,
        args.fusion,
        args,
    )
    good = images[labels == 0]
    for method in args.synthetic:
        s_images, s_masks, s_labels = synthetic_set(good, method, args.seed)
        rows += evaluate(
            f"synthetic {method}", s_images, s_masks, s_labels, residual_pipe, head_pipe, args.fusion, args
        )

    print(f"\n{args.data} {args.category or ''} at {resolution} px, {len(test)} test images\n")
    print("| set | map | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|")
    for r in rows:
        cells = [
            f"{r[k]:.3f}" if r.get(k) is not None and np.isfinite(r[k]) else "-"
            for k in ("image_auroc", "pixel_auroc", "aupro")
        ]
        print(f"| {r['set']} | {r['map']} | " + " | ".join(cells) + " |")
    if args.timing:
        t = timing(head_pipe, images, args.batch_size)
        rows.append({"set": "timing", **t})
        print(
            f"\ndetection {t['detect_ms']:.1f} ms/image, head {t['head_ms']:.1f} ms/image "
            f"(+{100 * t['head_share']:.1f} %), detection with the head {t['with_head_ms']:.1f} ms/image; "
            f"{args.threads} thread(s), batch {args.batch_size}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
