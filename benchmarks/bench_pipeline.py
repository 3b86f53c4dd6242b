"""Time per image of the latent pipeline (its defaults) against the AnoDDPM setting in pixel space.

    nice -n 10 python benchmarks/bench_pipeline.py [--sizes 128 256] [--batch_size 8] [--threads 1]
        [--device cpu|cuda] [--images DIR]

(a) latent: the `small` AutoencoderKL (f = 4) and `small` UNet2DModel on its latents, the scorer's
    defaults (DDIM, strength 0.25, its few steps, simplex noise, pixel + SSIM + latent residuals).
(b) AnoDDPM: the same `small` UNet widths on pixels, 1000-step schedule, strength 0.25, every one of
    the 250 DDPM steps, simplex noise on every step. Running 250 steps at 256 px takes many CPU
    minutes, so (b) times the whole call with `--anoddpm_steps` k1 and k2 steps and scales up:
    per_step = (T(k2) - T(k1)) / (k2 - k1), total = T(k1) + (250 - k1) * per_step. Every step costs
    the same (one UNet pass, one scheduler step, one noise draw), whatever its timestep.

Weights are random: timing does not depend on training. Both settings see the same images
(random ones, or the first `batch_size` of `--images DIR`). Goal: (a) at least 100x faster at 256 px.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffad import AnomalyDetectionPipeline
from diffad.models import build_autoencoder, build_unet, downsample_factor, latent_channels
from diffad.scoring.scorer import AnomalyScorer

ANODDPM_STRENGTH = 0.25
TRAIN_STEPS = 1000
ANODDPM_STEPS = round(ANODDPM_STRENGTH * TRAIN_STEPS)


def latent_pipeline(size: int, channels: int) -> AnomalyDetectionPipeline:
    vae = build_autoencoder("small", "kl", in_channels=channels)
    unet = build_unet("small", in_channels=latent_channels(vae), sample_size=size // downsample_factor(vae))
    scheduler = DDIMScheduler(num_train_timesteps=TRAIN_STEPS, clip_sample=False)
    return AnomalyDetectionPipeline(
        unet=unet, scheduler=scheduler, scorer=AnomalyScorer(resolution=size), vae=vae
    )


def anoddpm_pipeline(size: int, channels: int) -> AnomalyDetectionPipeline:
    scorer = AnomalyScorer(
        resolution=size,
        strength=ANODDPM_STRENGTH,
        num_inference_steps=ANODDPM_STEPS,
        sampler="ddpm",
        noise="simplex",
    )
    unet = build_unet("small", in_channels=channels, sample_size=size)
    return AnomalyDetectionPipeline(
        unet=unet, scheduler=DDPMScheduler(num_train_timesteps=TRAIN_STEPS), scorer=scorer
    )


def load_images(folder: str | None, count: int, size: int, channels: int) -> torch.Tensor:
    if folder is None:
        return torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    from diffad.data.images import load_image
    from diffad.data.samples import is_image_file

    paths = sorted(p for p in Path(folder).rglob("*") if is_image_file(p))[:count]
    if len(paths) < count:
        raise SystemExit(f"{folder} holds {len(paths)} images; need {count}")
    return torch.stack([load_image(p, channels=channels, size=size) for p in paths])


def seconds(pipe: AnomalyDetectionPipeline, images: torch.Tensor, device: str, **kwargs) -> float:
    """CPU time of the process on the CPU (with one thread it does not count other users of a shared
    machine, which wall-clock time would); wall-clock time on a GPU."""
    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
    start = clock()
    generator = torch.Generator(device).manual_seed(0)
    pipe(images, generator=generator, batch_size=len(images), output_type="pt", **kwargs)
    if cuda:
        torch.cuda.synchronize()
    return clock() - start


def prepared(pipe: AnomalyDetectionPipeline, device: str, dtype: torch.dtype) -> AnomalyDetectionPipeline:
    pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true", help="float16 weights (GPU)")
    parser.add_argument("--anoddpm_steps", type=int, nargs=2, default=[1, 3], metavar=("K1", "K2"))
    parser.add_argument(
        "--images", default=None, help="a folder of images to time on (default: random images)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.half else torch.float32
    k1, k2 = args.anoddpm_steps

    rows = []
    for size in args.sizes:
        images = load_images(args.images, args.batch_size, size, args.channels)
        latent = prepared(latent_pipeline(size, args.channels), args.device, dtype)
        seconds(latent, images[:1], args.device)  # warm-up
        latent_s = seconds(latent, images, args.device) / len(images)
        steps = latent.scorer.config.num_inference_steps
        del latent

        anoddpm = prepared(anoddpm_pipeline(size, args.channels), args.device, dtype)
        seconds(anoddpm, images[:1], args.device, num_inference_steps=1)  # warm-up
        t1 = seconds(anoddpm, images, args.device, num_inference_steps=k1)
        t2 = seconds(anoddpm, images, args.device, num_inference_steps=k2)
        per_step = max(t2 - t1, 0.0) / (k2 - k1)
        anoddpm_s = (t1 + (ANODDPM_STEPS - k1) * per_step) / len(images)
        del anoddpm
        rows.append((size, latent_s, steps, anoddpm_s, per_step / len(images)))
        print(f"{size} px done: latent {latent_s:.3f} s/image, AnoDDPM {anoddpm_s:.2f} s/image", flush=True)

    where = (
        f"cpu, {args.threads} thread(s), process CPU time"
        if args.device == "cpu"
        else f"{args.device}, wall time"
    )
    print(
        f"\nbatch {args.batch_size}, {args.channels} channels, {where}, {str(dtype).split('.')[-1]}, random weights"
    )
    print(
        f"AnoDDPM timed with {k1} and {k2} of its {ANODDPM_STEPS} steps and scaled up (see the docstring)\n"
    )
    print(
        "| size | latent pipeline (DDIM steps) s/image | images/s | AnoDDPM pixel space (250 DDPM steps) s/image "
        "| AnoDDPM s/step/image | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for size, latent_s, steps, anoddpm_s, step_s in rows:
        print(
            f"| {size} | {latent_s:.3f} ({steps}) | {1 / latent_s:.1f} | {anoddpm_s:.2f} | {step_s:.3f} "
            f"| {anoddpm_s / latent_s:.0f}x |"
        )


if __name__ == "__main__":
    main()
