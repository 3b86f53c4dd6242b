"""Stage 2's inputs: a trained autoencoder, and the good images encoded once and scaled as LDM does."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffad.errors import ConfigError

AUTOENCODERS = ("AutoencoderKL", "VQModel", "FeatureEncoder")  # the last: a frozen pretrained first stage


def _autoencoder_folder(path: Path) -> tuple[Path, str] | None:
    """(folder, class name) of the autoencoder at `path` or in its `vae/` subfolder (a pipeline)."""
    for folder in (path, path / "vae"):
        config = folder / "config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text()).get("_class_name")
            except (json.JSONDecodeError, AttributeError):
                continue
            if name in AUTOENCODERS:
                return folder, name
    return None


def load_autoencoder(path: str) -> torch.nn.Module:
    """The AutoencoderKL, VQModel or FeatureEncoder saved at `path` (train_vae's or the feature stage's
    --output_dir, or a pipeline folder)."""
    import diffusers

    found = _autoencoder_folder(Path(path))
    if found is None:
        raise ConfigError(
            f"--vae {path} holds no autoencoder (no config.json naming {' or '.join(AUTOENCODERS)}, "
            "there or in vae/); give the --output_dir of a finished train_vae.py run, or pass --pixel_space."
        )
    folder, name = found
    if name == "FeatureEncoder":
        from diffad.models.feature_encoder import FeatureEncoder

        vae = FeatureEncoder.from_pretrained(str(folder))
        if not vae.config.fitted:
            raise ConfigError(f"--vae {path}: the feature first stage there has no statistics; fit it again")
    else:
        vae = getattr(diffusers, name).from_pretrained(str(folder))
    vae.requires_grad_(False).eval()
    return vae


@torch.no_grad()
def encode(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unscaled latents: the posterior mean of a KL autoencoder, the pre-quantisation latents of a VQ one."""
    out = vae.encode(images)
    if hasattr(out, "latent_dist"):
        return out.latent_dist.mean
    return out.latents


@torch.no_grad()
def encode_dataset(
    vae: torch.nn.Module | None,
    dataset,
    *,
    batch_size: int,
    device: torch.device,
    mirrored: bool = False,
    show_progress: bool = True,
) -> torch.Tensor:
    """Unscaled latents of every image, (V, N, C, h, w) on the CPU: V = 2 with `mirrored` (each image
    and its left-right mirror), else 1. Without a vae the images themselves (pixel space)."""
    from torch.utils.data import DataLoader

    views = [[] for _ in range(2 if mirrored else 1)]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="encoding latents", disable=not show_progress):
        x = batch["image"].to(device)
        for view, images in zip(views, (x, x.flip(-1))):
            view.append((images if vae is None else encode(vae, images)).float().cpu())
    return torch.stack([torch.cat(view) for view in views])


def scaling_factor(latents: torch.Tensor) -> float:
    """LDM's scale: 1 / std of the training latents, so the diffusion model sees unit variance."""
    std = float(latents.float().std())
    if not std > 0:
        raise ConfigError(
            "the training latents are constant (std 0): the autoencoder is degenerate; retrain it"
        )
    return 1.0 / std
