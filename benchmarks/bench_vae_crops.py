"""Autoencoders trained on crops, with and without whole-image batches: reconstruction error by row.

    nice -n 10 python benchmarks/bench_vae_crops.py --data data/dagm_class1 --steps 600

Trains the `small` autoencoder twice from the same seed on half-size random crops of the good
training images (as `diffad fit` does from 128 px up): once on crops alone (`--full_image_every 0`),
once with every 4th batch of whole images (the default). Then reconstructs test images at the crop
size and at the whole size and prints the mean L1 error, that of the bottom eighth of the rows, and
the mean signed error of each eighth (top to bottom). Trained on crops alone, the decoder leaves a
dark band at the bottom of whole images: the bottom eighth's error is several times the rest.

`data/dagm_class1` is DAGM 2007 class 1 in MVTec AD layout: docs/DATASETS.md says where to get it and how to lay it out.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--category", default=None)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--channels", type=int, default=1, choices=(1, 3))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--test_images", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--work_dir", default=None, help="where the two autoencoders go (default: a temporary folder)"
    )
    return p.parse_args(argv)


def train(args, out: Path, every: int) -> None:
    from diffad.training import vae_stage
    from diffad.training.accelerate_setup import reset_accelerate_state

    argv = [
        "--data", args.data, "--resolution", args.resolution, "--channels", args.channels,
        "--output_dir", out, "--seed", 0, "--validation_steps", 0, "--checkpointing_steps", 0,
        "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", 20, "--preset", "small",
        "--train_batch_size", 4, "--learning_rate", 3e-4, "--random_flip",
        "--crop_size", args.resolution // 2, "--full_image_every", every, "--max_train_steps", args.steps,
    ]  # fmt: skip
    if args.category:
        argv += ["--category", args.category]
    try:
        vae_stage.main(vae_stage.parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate_state()


@torch.no_grad()
def errors(folder: Path, images: torch.Tensor, side: int) -> dict:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder).eval()
    x = images[..., :side, :side]
    y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    band = side // 8
    return {
        "l1": float((y - x).abs().mean()),
        "bottom_l1": float((y - x)[..., -band:, :].abs().mean()),
        "bands": [float((y - x)[..., r : r + band, :].mean()) for r in range(0, side, band)],
    }


def main(args) -> None:
    from diffad.data import load_samples
    from diffad.training.data import load_images

    torch.set_num_threads(args.threads)
    samples = [s for s in load_samples(args.data, category=args.category) if s.split == "test"]
    images = load_images(samples[: args.test_images], args.resolution, args.channels)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        rows = []
        for every in (0, 4):
            folder = work / f"full_image_every_{every}"
            train(args, folder, every)
            for side in (args.resolution // 2, args.resolution):
                rows.append((every, side, errors(folder, images, side)))
    print("\n| full_image_every | side | L1 | bottom-eighth L1 | signed error per eighth, top to bottom |")
    print("|---|---|---|---|---|")
    for every, side, e in rows:
        bands = " ".join(f"{b:+.3f}" for b in e["bands"])
        print(f"| {every} | {side} | {e['l1']:.4f} | {e['bottom_l1']:.4f} | {bands} |")


if __name__ == "__main__":
    main(parse_args())
