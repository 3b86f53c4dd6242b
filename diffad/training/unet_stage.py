"""Stage 2: a UNet2DModel learns to predict the (simplex or Gaussian) noise on latents of good images.

The good images are encoded once up front (and their mirror images, with --random_flip), scaled
by LDM's factor (1 / std of the latents, stored in the vae config), then the loop draws batches,
noise and timesteps from (seed, micro-batch) alone. With --pixel_space there is no autoencoder:
the UNet denoises the images themselves, as AnoDDPM does.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

from diffad.errors import ConfigError
from diffad.training.accelerate_setup import make_lr_scheduler, seeded
from diffad.training.args import add_data_args, add_training_args, check_resolution, check_training_args
from diffad.training.data import good_training_samples, load_images, training_images, validation_samples
from diffad.training.ema import ema_weights, make_ema
from diffad.training.latents import encode_dataset, load_autoencoder, scaling_factor
from diffad.training.order import BatchOrder, generator_for, global_randint, rank_rows
from diffad.training.panels import error_rows, save_panel, to_uint8
from diffad.training.pipeline_folder import PIPELINE_ENTRIES, detection_pipeline, write_detection_pipeline
from diffad.training.stage import (
    make_optimizer,
    optimizer_update,
    panel_path,
    resume_stage,
    start_stage,
    train_and_save,
)

logger = get_logger("diffad.training")


def add_unet_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_data_args(parser)
    g = parser.add_argument_group("diffusion model")
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--vae", help="folder of the trained autoencoder (train_vae.py's --output_dir)")
    source.add_argument("--pixel_space", action="store_true", help="no autoencoder: AnoDDPM on pixels")
    g.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    g.add_argument(
        "--noise",
        choices=("simplex", "gaussian"),
        default=None,
        help="the training noise (default: gaussian for a feature first stage, whose Gaussian prior "
        "assumes it, else simplex as in AnoDDPM)",
    )
    g.add_argument("--num_train_timesteps", type=int, default=1000)
    g.add_argument(
        "--beta_schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"), default="linear"
    )
    g.add_argument(
        "--max_timestep",
        type=int,
        default=None,
        help="draw training timesteps below this only (AnoDDPM); default: the whole schedule",
    )
    g.add_argument(
        "--class_conditional",
        action="store_true",
        help="with several categories: the UNet also gets the category's index (UNet2DModel's class "
        "embedding), one more class standing for 'no category' (a tenth of the training rows, with the "
        "first stage's category-free latents), so that detection without a category still works",
    )
    g.add_argument("--validation_strength", type=float, default=0.25, help="noise fraction for the panels")
    g.add_argument("--validation_inference_steps", type=int, default=10)
    add_training_args(parser, default_lr=1e-4, default_batch=16)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stage 2: train the diffusion UNet of an anomaly detector.")
    return add_unet_args(parser).parse_args(argv)


def scheduler_config(args) -> dict:
    # Latents are not bounded, pixels are: clip the predicted clean sample in pixel space only.
    return {
        "num_train_timesteps": args.num_train_timesteps,
        "beta_schedule": args.beta_schedule,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "clip_sample": bool(args.pixel_space),
    }


def check_unet_args(args) -> None:
    if args.num_train_timesteps < 2:
        raise ConfigError("--num_train_timesteps must be at least 2")
    if args.max_timestep is not None and not 1 <= args.max_timestep <= args.num_train_timesteps:
        raise ConfigError(
            f"--max_timestep must lie in 1..{args.num_train_timesteps} (--num_train_timesteps), not {args.max_timestep}"
        )


def draw_noise(kind: str, local_shape, generator, accelerator) -> torch.Tensor:
    from diffad.noise import sample_noise

    return rank_rows(
        lambda shape, g: sample_noise(kind, shape, generator=g),
        tuple(local_shape),
        generator,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )


def main(args: argparse.Namespace) -> dict:
    """Train stage 2 and write the detection pipeline into --output_dir; returns a summary."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from diffad.models import build_feature_unet, build_unet, downsample_factor, latent_channels
    from diffad.models.denoiser import noise_prior, predict_noise, zero_output
    from diffad.schedulers import NoiseDDIMScheduler
    from diffad.scoring.scorer import AnomalyScorer

    started = time.monotonic()
    check_training_args(args)
    check_unet_args(args)
    # Everything a user can get wrong is checked before the output folder is touched.
    vae = None if args.pixel_space else load_autoencoder(args.vae)
    vae_factor = 1 if vae is None else downsample_factor(vae)
    check_resolution(args.resolution, vae_factor, "the autoencoder")
    latent_res = args.resolution // vae_factor
    in_channels = args.channels if vae is None else latent_channels(vae)
    features = vae is not None and not getattr(vae, "has_decoder", True)
    if features and args.resolution != vae.config.sample_size:
        raise ConfigError(
            f"--resolution {args.resolution} differs from the feature first stage's {vae.config.sample_size} "
            f"({args.vae}); pass --resolution {vae.config.sample_size}"
        )
    prior = noise_prior(vae)
    noise_kind = args.noise or ("gaussian" if prior == "gaussian" else "simplex")
    if prior == "gaussian" and noise_kind != "gaussian":
        raise ConfigError(
            f"--vae {args.vae} is a whitened feature first stage whose Gaussian prior assumes Gaussian noise: "
            "pass --noise gaussian (or leave --noise out)"
        )
    samples = good_training_samples(args.data, args.category)
    categories = sorted({s.category for s in samples})
    encoder_categories = list(getattr(vae, "categories", None) or []) if features else []
    if encoder_categories and encoder_categories != categories:
        raise ConfigError(
            f"the feature first stage at {args.vae} has Gaussians for the categories {encoder_categories}, "
            f"but the training images are of {categories}; train stage 2 on the same --data and --category"
        )
    conditional = args.class_conditional and len(categories) > 1
    with seeded(args.seed):
        # Any multiple of the UNet's factor will do here; the real size is set once it is checked.
        build = build_feature_unet if features else build_unet
        classes = len(categories) + 1 if conditional else None  # the last: no category given
        unet = build(args.preset, in_channels=in_channels, sample_size=1024, num_class_embeds=classes)
        if prior == "gaussian":
            zero_output(unet)  # the Gaussian prior alone to start with
    check_resolution(
        args.resolution, vae_factor * downsample_factor(unet), "the autoencoder and UNet together"
    )
    unet.register_to_config(sample_size=latent_res)
    if vae is not None and vae.config.in_channels != args.channels:
        raise ConfigError(
            f"--channels {args.channels} does not match the autoencoder at {args.vae}, which takes "
            f"{vae.config.in_channels}-channel images; pass --channels {vae.config.in_channels}."
        )

    accelerator = start_stage(args, name="train_unet", model_entries=PIPELINE_ENTRIES)
    device, main_process = accelerator.device, accelerator.is_main_process
    vae = None if vae is None else vae.to(device)
    versions = by_category = None
    if features:  # the embeddings `diffad fit`'s stage 1 has just made are reused
        from diffad.training.feature_stage import stage_latents

        versions, by_category = stage_latents(
            vae,
            args.vae,
            samples,
            lambda: training_images(samples, args.resolution, args.channels, show_progress=main_process),
            mirrored=args.random_flip,
        )
    else:
        dataset = training_images(samples, args.resolution, args.channels, show_progress=main_process)
        versions = encode_dataset(
            vae,
            dataset,
            batch_size=max(4 * args.train_batch_size, 8),
            device=device,
            mirrored=args.random_flip,  # a coin per row picks the image or its mirror
            show_progress=main_process,
        )
    scale = 1.0
    if vae is not None and not features:  # whitened feature latents have unit scale already
        scale = scaling_factor(versions[0])
        vae.register_to_config(scaling_factor=scale)
    versions = (versions * scale).to(device)
    # What a class-conditional UNet sees: each image's category (and its latents whitened by that
    # category's Gaussians, when the first stage has them), or, for a tenth of the rows, "no category".
    labels = torch.tensor([categories.index(s.category) for s in samples], device=device)
    by_category = versions if by_category is None else (by_category * scale).to(device)
    if len(categories) > 1:
        kind = "class-conditional" if conditional else "unconditional"
        own = ", each with its own Gaussians in the first stage" if encoder_categories else ""
        logger.info(f"one {kind} model for {len(categories)} categories ({', '.join(categories)}){own}")
    elif args.class_conditional:
        logger.warning(
            "--class_conditional: the training images are of one category; the UNet is unconditional"
        )
    logger.info(
        f"{len(samples)} training images -> latents {tuple(versions.shape[2:])}, scaling factor {scale:.4f}"
    )

    noise_scheduler = DDPMScheduler(**scheduler_config(args))
    # Without a decoder only latent-space residuals exist: the score of the model, to start with.
    no_decoder = dict(
        pixel_weight=0.0, ssim_weight=0.0, latent_weight=0.0, feature_weight=0.0, score_weight=1.0
    )
    scorer = AnomalyScorer(
        resolution=args.resolution,
        noise=noise_kind,
        categories=categories if categories != [None] else None,
        **(no_decoder if features else {}),
    )
    max_t = args.max_timestep or args.num_train_timesteps
    optimizer = make_optimizer(unet.parameters(), args)
    lr_scheduler = make_lr_scheduler(accelerator, optimizer, args)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    ema = make_ema(accelerator.unwrap_model(unet), args.ema_decay) if args.use_ema else None
    start_step = resume_stage(accelerator, args, ema)

    rank, world = accelerator.process_index, accelerator.num_processes
    order = BatchOrder(len(samples), args.train_batch_size, seed=args.seed, rank=rank, world_size=world)
    accum = args.gradient_accumulation_steps

    def train_step(step: int) -> dict[str, float]:
        total = 0.0
        for k in range(accum):
            m = step * accum + k
            idx = torch.tensor(order.indices(m), device=device)
            flip = generator_for(args.seed, "flip", m)
            pick = global_randint(len(versions), len(idx), flip, rank=rank, world_size=world).to(device)
            x0 = versions[pick, idx]
            class_labels = None
            if conditional:
                drop = torch.rand(len(idx), generator=generator_for(args.seed, "labels", m)).to(device) < 0.1
                x0 = torch.where(drop.view(-1, 1, 1, 1), x0, by_category[pick, idx])
                class_labels = torch.where(drop, len(categories), labels[idx])
            noise = draw_noise(noise_kind, x0.shape, generator_for(args.seed, "noise", m), accelerator).to(x0)
            steps_gen = generator_for(args.seed, "timesteps", m)
            t = global_randint(max_t, len(idx), steps_gen, rank=rank, world_size=world).to(device)
            noisy = noise_scheduler.add_noise(x0, noise, t)
            with accelerator.accumulate(unet):
                predicted = predict_noise(unet, noisy, t, noise_scheduler.alphas_cumprod, prior, class_labels)
                loss = F.mse_loss(predicted.float(), noise.float())
                optimizer_update(accelerator, loss, unet, optimizer, lr_scheduler, args.max_grad_norm)
            total += loss.detach().item() / accum
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        return {"loss": total, "lr": lr_scheduler.get_last_lr()[0]}

    val_images = load_images(
        validation_samples(args.data, args.category, samples, args.num_validation_images),
        args.resolution,
        args.channels,
    ).to(device)

    def validate(step: int) -> None:
        if not main_process or not len(val_images):
            return
        model = accelerator.unwrap_model(unet)
        with ema_weights(model, ema):
            model.eval()
            pipe = detection_pipeline(
                vae=vae,
                unet=model,
                scheduler=NoiseDDIMScheduler.from_config(noise_scheduler.config),
                scorer=scorer,
            )
            pipe.set_progress_bar_config(disable=True)
            out = pipe(
                val_images,
                strength=args.validation_strength,
                num_inference_steps=args.validation_inference_steps,
                generator=generator_for(args.seed, "validation"),
                output_type="pt",
            )
            model.train()
        if out.reconstructions is None:  # a first stage without a decoder
            rows = {"input": to_uint8(val_images)}
        else:
            rows = error_rows(val_images, out.reconstructions.to(val_images) * 2 - 1)
        maps = out.anomaly_maps[:, None]
        rows["anomaly map"] = to_uint8(maps / maps.amax().clamp_min(1e-6), (0.0, 1.0))
        save_panel(rows, panel_path(args, step))

    def save_final() -> None:
        model = accelerator.unwrap_model(unet)
        with ema_weights(model, ema):
            # diffusers' own DDIMScheduler class: the pipeline steps with a Noise* scheduler built from
            # this config anyway, and diffusers cannot yet reload diffad.schedulers' classes from
            # model_index.json (their module lacks the SchedulerMixin name it looks up).
            write_detection_pipeline(
                args.output_dir,
                vae=vae,
                unet=model,
                scheduler=DDIMScheduler.from_config(noise_scheduler.config),
                scorer=scorer,
            )

    return train_and_save(
        accelerator,
        args,
        name="unet",
        start_step=start_step,
        started=started,
        train_step=train_step,
        validate=validate,
        save_final=save_final,
        ema=ema,
    )
