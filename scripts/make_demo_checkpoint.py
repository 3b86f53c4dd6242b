"""Build the demo's shipped pipeline, checkpoints/elpv-mono, from scratch (`make checkpoint`).

1. `diffad fit` with the demo's recipe (`diffad.demo.FIT_ARGS`: ELPV mono cells, 128 px, one channel,
   the `small` preset, ImageNet EfficientNet-Lite0 features fused in) and a time budget; the fit
   calibrates on good training cells and chooses the residual weights on synthetic defects;
2. the networks' weights are stored as float16 (they load back as float32), to keep the folder small;
3. the folder replaces the old one only once complete (written beside it, then renamed).

    python scripts/make_demo_checkpoint.py --output_dir checkpoints/elpv-mono [--max_minutes 25]
    python scripts/make_demo_checkpoint.py --output_dir checkpoints/elpv-mono --from_fit runs/elpv-fit

`--from_fit DIR` packages an existing `diffad fit` folder instead of training (features attached,
calibrated again and the residual weights chosen again, with the recipe's settings).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

LIMIT_MB = 40.0
HALF = ("vae", "unet", "feature_extractor", "segmentation_head")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="checkpoints/elpv-mono")
    p.add_argument("--from_fit", default=None, help="package this diffad fit folder instead of training")
    p.add_argument("--max_minutes", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train(work: Path, minutes: float, seed: int) -> Path:
    from diffad.demo import FIT_ARGS
    from diffad.training.fit import add_fit_args, run_fit

    fit_dir = work / "fit"
    argv = [*FIT_ARGS, "--output_dir", str(fit_dir), "--max_minutes", str(minutes), "--seed", str(seed)]
    if fit_dir.is_dir():
        argv.append("--resume")
    run_fit(add_fit_args(argparse.ArgumentParser()).parse_args(argv))
    return fit_dir


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def model_card(stages: list[dict], config, selection: str | None) -> str:
    """The folder's README: how it was trained and why it detects with the settings it has."""
    lines = [
        "# elpv-mono",
        "",
        "The pipeline `diffad demo` loads: ELPV mono solar cells, 128 px, one channel, with ImageNet",
        "EfficientNet-Lite0 features. Rebuild it with `make checkpoint` (scripts/make_demo_checkpoint.py).",
        "",
        "| training stage | steps | steps / s | final loss |",
        "|---|---|---|---|",
    ]
    for s in stages:
        if "steps" in s:
            lines.append(
                f"| {s['stage']} | {s['steps']} | {s['steps_per_second']:.2f} | {s.get('loss', float('nan')):.4g} |"
            )
    weights = ", ".join(
        f"{name} {config[f'{name}_weight']:g}"
        for name in ("pixel", "ssim", "latent", "feature", "feature_gaussian")
    )
    lines += [
        "",
        f"Detection: {config['num_inference_steps']} DDIM steps from strength {config['strength']}; "
        f"residual weights {weights}; deviation {config['deviation']}; calibration {config['calibration']}.",
    ]
    if selection is not None:
        chosen = json.loads(selection)
        c = chosen["chosen"]
        lines += [
            "",
            f"The weights were chosen on synthetic defects ({chosen['method']}) made on {chosen['images']} good "
            "training cells held out from calibration and the feature Gaussians, never on test cells: image AUROC "
            f"{c['image_auroc']:.3f}, pixel AUROC {c['pixel_auroc']:.3f}, AUPRO {c['aupro']:.3f} there. "
            f"selection.json lists all {len(chosen['trials'])} settings tried.",
        ]
    if config.get("threshold_fpr") is not None:
        lines += ["", threshold_line(config)]
    return "\n".join(lines) + "\n"


def threshold_line(config) -> str:
    f1 = "none" if config.get("threshold_f1") is None else f"{config['threshold_f1']:.4g}"
    return (
        f"Thresholds, set on the same held-out cells: fpr {config['threshold_fpr']:.4g} (flags at most "
        f"{config['threshold_fpr_target']:g} of them), f1 {f1} (F1-best against their synthetic defects); "
        f"{config['default_threshold']} gives the verdicts."
    )


def package(fit_dir: Path, output_dir: Path, seed: int, recalibrate: bool) -> float:
    from diffad import AnomalyDetectionPipeline
    from diffad.training.calibration import SELECTION_FILE

    work = output_dir.parent / f".{output_dir.name}.build"
    staged = work / "pipeline"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(
        fit_dir, staged, ignore=shutil.ignore_patterns("checkpoint-*", "autoencoder", "logs", ".*")
    )
    if recalibrate:
        # A fit made by another recipe gets this one's detection settings, features, calibration and
        # residual weights chosen on synthetic defects: the last step of `diffad fit` with FIT_ARGS.
        from diffad.demo import FIT_ARGS
        from diffad.training.fit import add_fit_args, calibrate_fit

        argv = [*FIT_ARGS, "--output_dir", str(staged), "--seed", str(seed)]
        args = add_fit_args(argparse.ArgumentParser()).parse_args(argv)
        calibrate_fit(args, staged, args.features)
    pipe = AnomalyDetectionPipeline.from_pretrained(str(staged))
    for name in HALF:
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(torch.float16)
    chosen = staged / SELECTION_FILE
    selection = chosen.read_text() if chosen.is_file() else None
    shutil.rmtree(staged, ignore_errors=True)
    pipe.save_pretrained(str(staged))
    if selection is not None:  # why the scorer has its weights
        chosen.write_text(selection)
    summary = fit_dir / "fit_summary.json"
    stages = json.loads(summary.read_text())["stages"] if summary.is_file() else []
    (staged / "README.md").write_text(model_card(stages, pipe.scorer.config, selection))
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
    size = package(fit_dir, output_dir, args.seed, recalibrate=args.from_fit is not None)
    print(f"wrote {output_dir} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
