"""Build the demo's shipped pipeline, checkpoints/elpv-mono, from scratch (`make checkpoint`).

1. `diffad fit` on the ELPV mono cells at 128 px, one channel, the `small` preset, a time budget,
   with ImageNet EfficientNet-Lite0 features fused in (fitted and calibrated on good training cells);
2. the networks' weights are stored as float16 (they load back as float32), to keep the folder small;
3. the folder replaces the old one only once complete (written beside it, then renamed).

    python scripts/make_demo_checkpoint.py --output_dir checkpoints/elpv-mono [--max_minutes 25]
    python scripts/make_demo_checkpoint.py --output_dir checkpoints/elpv-mono --from_fit runs/elpv-fit

`--from_fit DIR` packages an existing `diffad fit` folder instead of training (the demo's residual
weights are set, features attached, and everything calibrated again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

FIT_ARGS = [
    "--data",
    "elpv",
    "--category",
    "mono",
    "--resolution",
    "128",
    "--channels",
    "1",
    "--preset",
    "small",
]
LIMIT_MB = 40.0
HALF = ("vae", "unet", "feature_extractor", "segmentation_head")
# Residual weights for the shipped model (measured on ELPV mono: see the README's known limits):
# the fused feature Gaussians carry the signal; SSIM adds the reconstruction's view at half weight.
DEMO_SETTINGS = {
    "pixel_weight": 0.0, "latent_weight": 0.0, "ssim_weight": 0.5, "deviation": "higher",
    "num_inference_steps": 3,  # the demo runs in about 3 CPU-minutes
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="checkpoints/elpv-mono")
    p.add_argument("--from_fit", default=None, help="package this diffad fit folder instead of training")
    p.add_argument("--max_minutes", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train(work: Path, minutes: float, seed: int) -> Path:
    from diffad.training.fit import add_fit_args, run_fit

    fit_dir = work / "fit"
    argv = [*FIT_ARGS, "--output_dir", str(fit_dir), "--max_minutes", str(minutes), "--seed", str(seed)]
    argv += ["--features", "lite0"]
    if fit_dir.is_dir():
        argv.append("--resume")
    run_fit(add_fit_args(argparse.ArgumentParser()).parse_args(argv))
    return fit_dir


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def package(fit_dir: Path, output_dir: Path, seed: int) -> float:
    from diffad import AnomalyDetectionPipeline
    from diffad.training.calibration import calibrate_pipeline, configure_scorer

    work = output_dir.parent / f".{output_dir.name}.build"
    staged = work / "pipeline"
    shutil.rmtree(staged, ignore_errors=True)
    pipe = AnomalyDetectionPipeline.from_pretrained(str(fit_dir))
    configure_scorer(pipe, DEMO_SETTINGS)
    pipe.save_pretrained(str(staged))
    # Attaches EfficientNet-Lite0 features, fits their Gaussians on good training cells and
    # calibrates every residual on 32 other good training cells.
    calibrate_pipeline(staged, "elpv", "mono", mode="global", num_images=32, seed=seed, features="lite0")
    pipe = AnomalyDetectionPipeline.from_pretrained(str(staged))
    for name in HALF:
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(torch.float16)
    shutil.rmtree(staged, ignore_errors=True)
    pipe.save_pretrained(str(staged))
    summary = fit_dir / "fit_summary.json"
    stages = json.loads(summary.read_text())["stages"] if summary.is_file() else []
    (staged / "README.md").write_text(
        "# elpv-mono\n\nThe pipeline `diffad demo` loads: ELPV mono solar cells, 128 px, one channel.\n"
        "Rebuild it with `make checkpoint` (scripts/make_demo_checkpoint.py).\n\n"
        f"Training stages: `{json.dumps(stages)}`\n"
    )
    size = folder_mb(staged)
    if size > LIMIT_MB:
        raise SystemExit(f"{staged} is {size:.1f} MB, over the {LIMIT_MB:g} MB the demo model may take")
    old = work / "previous"
    shutil.rmtree(old, ignore_errors=True)
    if output_dir.exists():
        output_dir.rename(old)
    staged.rename(output_dir)
    shutil.rmtree(work, ignore_errors=True)
    return size


def main(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir)
    fit_dir = Path(args.from_fit) if args.from_fit else None
    if fit_dir is None:
        fit_dir = train(output_dir.parent / f".{output_dir.name}.build", args.max_minutes, args.seed)
    size = package(fit_dir, output_dir, args.seed)
    print(f"wrote {output_dir} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
