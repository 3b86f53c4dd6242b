"""`diffad synthesize`: a synthetic defect dataset (MVTec AD layout) from a folder of good images."""

from __future__ import annotations

import argparse
from pathlib import Path

# Kept here, not imported from diffad.synthesis.methods, so that `diffad --help` does not load torch.
METHODS = ("draem", "smooth", "cutpaste", "cutpaste_scar", "scratch", "spots", "crack", "diffusion", "mix")


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" where it tells something: not on required options, not for None or a
    flag's False, and not when the help already says its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        unsaid = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.required or unsaid or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synthesize",
        help="write a synthetic defect dataset (MVTec AD layout) from good images",
        description=(
            "Hold back some good images for the test set, copy the rest to train/good, and put synthetic "
            "defects on the held-back ones: OUT/train/good, OUT/test/good, OUT/test/<method>, "
            "OUT/ground_truth/<method>/<name>_mask.png and OUT/manifest.json. The same command gives the "
            "same bytes; rerun it after an interruption to finish the set."
        ),
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument(
        "--input", required=True, help="folder of good images (or an MVTec category: its train/good)"
    )
    parser.add_argument("--output_dir", required=True, help="folder to write the dataset into")
    parser.add_argument("--num", type=int, required=True, help="number of defective images to make")
    parser.add_argument(
        "--method",
        default="draem",
        choices=METHODS,
        help="defect kind; 'smooth' removes texture (blur, smooth and flat patches); "
        "'mix' draws one per image",
    )
    parser.add_argument("--seed", type=int, default=0, help="global seed; each file's seed derives from it")
    parser.add_argument(
        "--resolution", type=int, default=None, help="resize every image to R x R (default: keep)"
    )
    parser.add_argument(
        "--test_fraction",
        type=float,
        default=0.2,
        help="share of the good images held back for test/good and as defect sources, above 0 and below 1 "
        "(every defect is made on a held-back image, never on one of train/good)",
    )
    parser.add_argument(
        "--textures", default=None, help="folder of texture images for 'draem' fills (e.g. DTD)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="saved pipeline folder (vae/unet/scheduler) for --method diffusion (and mix)",
    )
    parser.add_argument(
        "--foreground",
        default="none",
        choices=("none", "auto"),
        help="'auto' keeps defects on the object (Otsu threshold + morphology)",
    )
    parser.add_argument(
        "--mask_noise",
        default="perlin",
        choices=("perlin", "simplex"),
        help="noise thresholded into the masks of draem, smooth and diffusion defects",
    )
    parser.add_argument(
        "--anomaly_strength",
        type=float,
        default=1.0,
        help="diffusion: variance inflation s of RealNet's SDAS (0 = normal-looking patch)",
    )
    parser.add_argument("--num_inference_steps", type=int, default=50, help="diffusion: denoising steps")
    parser.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="diffusion: fraction of the schedule the masked region is noised to (1 = pure noise)",
    )
    parser.add_argument(
        "--noise",
        default="gaussian",
        choices=("gaussian", "simplex"),
        help="diffusion: the noise the model was trained with",
    )
    parser.add_argument(
        "--device", default=None, help="diffusion: torch device (default: cuda when available)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace train/, test/, ground_truth/ and manifest.json in a non-empty folder",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def run(args) -> int:
    import torch

    from diffad.detectors import resolve_device
    from diffad.errors import ConfigError
    from diffad.synthesis.dataset_writer import Settings, synthesize_dataset

    if not 0 < args.test_fraction < 1:
        raise ConfigError(
            f"--test_fraction must be in (0, 1), not {args.test_fraction}: the defects are made on the "
            "held-back good images, so that no detector trained on train/good is tested on an image it saw"
        )
    if not 0 < args.strength <= 1:
        raise ConfigError(f"--strength must be in (0, 1], not {args.strength}")
    if args.resolution is not None and args.resolution < 8:
        raise ConfigError(f"--resolution must be at least 8, not {args.resolution}")
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    settings = Settings(
        input=_absolute(args.input),
        method=args.method,
        num=args.num,
        seed=args.seed,
        resolution=args.resolution,
        test_fraction=args.test_fraction,
        textures=_absolute(args.textures),
        model=_absolute(args.model),
        foreground=args.foreground,
        mask_noise=args.mask_noise,
        anomaly_strength=args.anomaly_strength,
        num_inference_steps=args.num_inference_steps,
        strength=args.strength,
        noise=args.noise,
    )
    device = str(resolve_device(args.device))
    manifest = synthesize_dataset(
        settings, args.output_dir, overwrite=args.overwrite, device=device, progress=not args.quiet
    )
    counts = ", ".join(f"{k}: {v}" for k, v in manifest["counts"].items())
    print(f"{args.output_dir}: {counts}")
    return 0
