"""Stage 1: an AutoencoderKL or VQModel learns to reconstruct good images (L1 + SSIM, KL or VQ terms,
and a PatchGAN discriminator from --disc_start, as in Taming Transformers).
"""

from __future__ import annotations

import argparse
import time

import torch
from accelerate.logging import get_logger
from torch import nn

from diffad.errors import ConfigError
from diffad.training.accelerate_setup import make_lr_scheduler, seeded
from diffad.training.args import add_data_args, add_training_args, check_resolution, check_training_args
from diffad.training.checkpoints import write_final_atomic
from diffad.training.data import (
    good_training_samples,
    load_images,
    micro_batches,
    training_images,
    validation_samples,
)
from diffad.training.ema import ema_weights, make_ema
from diffad.training.order import BatchOrder, generator_for, global_randn, random_crops, random_hflip
from diffad.training.panels import error_rows, save_panel
from diffad.training.stage import (
    make_optimizer,
    optimizer_update,
    panel_path,
    resume_stage,
    start_stage,
    train_and_save,
)

logger = get_logger("diffad.training")

VAE_ENTRIES = ["config.json", "diffusion_pytorch_model.safetensors"]
REGULARIZATION_WEIGHT = {"kl": 1e-6, "vq": 1.0}  # LDM's KL weight; VQ's codebook terms at full weight


def add_vae_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_data_args(parser)
    g = parser.add_argument_group("autoencoder")
    g.add_argument("--model_type", choices=("kl", "vq"), default="kl", help="AutoencoderKL or VQModel")
    g.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    g.add_argument("--regularization_weight", type=float, default=None, help="KL/VQ weight (kl 1e-6, vq 1)")
    g.add_argument(
        "--crop_size",
        type=int,
        default=None,
        help="train on random crops of this size (a fraction of the cost per image); panels use whole images",
    )
    g.add_argument(
        "--full_image_every",
        type=int,
        default=4,
        help="with --crop_size, every Nth batch is of whole images (0: never): an autoencoder trained on "
        "crops alone reconstructs whole images with a dark band at the bottom edge",
    )
    g.add_argument("--ssim_weight", type=float, default=1.0, help="weight of 1 - SSIM beside L1")
    g.add_argument(
        "--disc_start", type=int, default=None, help="step the discriminator starts at (default: none)"
    )
    g.add_argument("--disc_weight", type=float, default=0.5)
    g.add_argument("--disc_learning_rate", type=float, default=None, help="default: --learning_rate")
    add_training_args(parser, default_lr=1e-4, default_batch=8)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stage 1: train the autoencoder of an anomaly detector.")
    return add_vae_args(parser).parse_args(argv)


class Autoencoding(nn.Module):
    """Encode, sample the posterior with given noise, decode: one forward, so DDP syncs all of it.

    Returns (reconstructions, regularization): the KL term of an AutoencoderKL, the codebook and
    commitment terms of a VQModel. `eps` (the posterior noise) comes from the caller so that it is
    drawn for the global batch; None decodes the posterior mean.
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, eps: torch.Tensor | None = None):
        from diffad.models.losses import kl_loss

        if not hasattr(self.vae, "quantize"):  # AutoencoderKL
            posterior = self.vae.encode(images).latent_dist
            z = posterior.mean if eps is None else posterior.mean + posterior.std * eps.to(posterior.mean)
            return self.vae.decode(z).sample, kl_loss(posterior)
        out = self.vae(images)
        return out.sample, out.commit_loss.mean()


def discriminator_layers(resolution: int) -> int:
    """PatchGAN depth that leaves at least a 2x2 logit map (3 layers, 70 px patches, from 64 px up)."""
    return 3 if resolution >= 64 else 2 if resolution >= 32 else 1


def main(args: argparse.Namespace) -> dict:
    """Train stage 1 and save the autoencoder into --output_dir; returns a summary."""
    from diffad.models import build_autoencoder, downsample_factor
    from diffad.models.losses import (
        PatchDiscriminator,
        autoencoder_loss,
        discriminator_loss,
        last_decoder_layer,
    )

    started = time.monotonic()
    check_training_args(args)
    # Everything a user can get wrong is checked before the output folder is touched.
    with seeded(args.seed):
        vae = build_autoencoder(args.preset, args.model_type, in_channels=args.channels)
    check_resolution(args.resolution, downsample_factor(vae), f"the {args.preset} autoencoder")
    if args.crop_size is not None:
        if not 0 < args.crop_size <= args.resolution or args.crop_size % downsample_factor(vae):
            raise ConfigError(
                f"--crop_size {args.crop_size} must be at most --resolution {args.resolution} and a "
                f"multiple of {downsample_factor(vae)}, the autoencoder's downsampling factor"
            )
    if args.full_image_every < 0:
        raise ConfigError(f"--full_image_every must be 0 (never) or more, not {args.full_image_every}")
    samples = good_training_samples(args.data, args.category)
    accelerator = start_stage(args, name="train_vae", model_entries=VAE_ENTRIES)
    device, main_process = accelerator.device, accelerator.is_main_process
    use_disc = args.disc_start is not None
    disc = None
    if use_disc:
        with seeded(args.seed + 1):
            disc = PatchDiscriminator(
                in_channels=args.channels,
                base_channels=16 if args.preset == "tiny" else 64,
                num_layers=discriminator_layers(args.crop_size or args.resolution),
            )

    dataset = training_images(samples, args.resolution, args.channels, show_progress=main_process)
    model = Autoencoding(vae)
    optimizer = make_optimizer(model.parameters(), args)
    lr_scheduler = make_lr_scheduler(accelerator, optimizer, args)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if use_disc:
        d_args = argparse.Namespace(
            **{**vars(args), "learning_rate": args.disc_learning_rate or args.learning_rate}
        )
        d_optimizer = make_optimizer(disc.parameters(), d_args)
        d_scheduler = make_lr_scheduler(accelerator, d_optimizer, d_args)
        disc, d_optimizer, d_scheduler = accelerator.prepare(disc, d_optimizer, d_scheduler)
    raw_vae = accelerator.unwrap_model(model).vae
    ema = make_ema(raw_vae, args.ema_decay) if args.use_ema else None
    start_step = resume_stage(accelerator, args, ema)

    rank, world = accelerator.process_index, accelerator.num_processes
    order = BatchOrder(len(samples), args.train_batch_size, seed=args.seed, rank=rank, world_size=world)
    accum = args.gradient_accumulation_steps
    batches = micro_batches(
        dataset, order, start_step * accum, args.max_train_steps * accum, args.dataloader_num_workers
    )
    reg_weight = (
        REGULARIZATION_WEIGHT[args.model_type]
        if args.regularization_weight is None
        else args.regularization_weight
    )
    raw_disc = accelerator.unwrap_model(disc) if use_disc else None

    def posterior_noise(x: torch.Tensor, m: int) -> torch.Tensor | None:
        if args.model_type != "kl":
            return None
        f = downsample_factor(raw_vae)
        shape = (x.shape[0], raw_vae.config.latent_channels, x.shape[-2] // f, x.shape[-1] // f)
        return global_randn(shape, generator_for(args.seed, "posterior", m), rank=rank, world_size=world)

    def whole_images(m: int) -> bool:
        every = args.full_image_every
        return every > 0 and m % every == every - 1

    def train_step(step: int) -> dict[str, float]:
        sums: dict[str, float] = {}
        disc_on = use_disc and step >= args.disc_start
        for k in range(accum):
            m = step * accum + k
            x = next(batches)["image"].to(device)
            if args.random_flip:
                x = random_hflip(x, generator_for(args.seed, "flip", m), rank=rank, world_size=world)
            if args.crop_size and not whole_images(m):
                corner = generator_for(args.seed, "crop", m)
                x = random_crops(x, args.crop_size, corner, rank=rank, world_size=world)
            # One accumulate() per micro-batch for both networks: accelerate counts its calls.
            with accelerator.accumulate(*((model, disc) if disc_on else (model,))):
                rec, reg = model(x, posterior_noise(x, m))
                # The generator's adversarial term goes through the bare discriminator with frozen
                # weights: no gradient reaches it, and its DDP wrapper is not involved.
                if disc_on:
                    raw_disc.requires_grad_(False)
                loss, logs = autoencoder_loss(
                    x,
                    rec,
                    reg,
                    step=step,
                    regularization_weight=reg_weight,
                    ssim_weight=args.ssim_weight,
                    discriminator=raw_disc if disc_on else None,
                    last_layer=last_decoder_layer(raw_vae),
                    disc_start=args.disc_start or 0,
                    disc_weight=args.disc_weight,
                )
                if disc_on:
                    raw_disc.requires_grad_(True)
                optimizer_update(accelerator, loss, model, optimizer, lr_scheduler, args.max_grad_norm)
                if disc_on:
                    d_loss, d_logs = discriminator_loss(
                        disc, x, rec.detach(), step=step, disc_start=args.disc_start
                    )
                    optimizer_update(accelerator, d_loss, disc, d_optimizer, d_scheduler, args.max_grad_norm)
                    logs.update(d_logs)
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + value / accum
        if ema is not None:
            ema.step(raw_vae.parameters())
        return {**sums, "lr": lr_scheduler.get_last_lr()[0]}

    val_images = load_images(
        validation_samples(args.data, args.category, samples, args.num_validation_images),
        args.resolution,
        args.channels,
    ).to(device)

    def validate(step: int) -> None:
        if not main_process or not len(val_images):
            return
        with ema_weights(raw_vae, ema), torch.no_grad():
            raw_vae.eval()
            rec, _ = Autoencoding(raw_vae)(val_images)
            raw_vae.train()
        save_panel(error_rows(val_images, rec.clamp(-1, 1)), panel_path(args, step))

    def save_final() -> None:
        with ema_weights(raw_vae, ema):
            write_final_atomic(args.output_dir, raw_vae.save_pretrained, marker="config.json")

    return train_and_save(
        accelerator,
        args,
        name="vae",
        start_step=start_step,
        started=started,
        train_step=train_step,
        validate=validate,
        save_final=save_final,
        ema=ema,
    )
