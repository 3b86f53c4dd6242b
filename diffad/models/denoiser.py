"""The noise prediction of the diffusion UNet, with the Gaussian prior of a whitened first stage.

When good latents are close to N(0, I) at every position (`FeatureEncoder` with position whitening),
the best noise prediction for z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε is linear: E[ε | z_t] = sqrt(1 - ᾱ_t) z_t.
With `noise_prior="gaussian"` in the first stage's config the UNet adds a learned correction to that
term (its output layer starts at zero), so an untrained model already is the per-position Gaussian
(PaDiM) and training learns what the Gaussians miss: the context of neighbouring positions and
non-Gaussian shapes. Training and detection both call `predict_noise`.
"""

from __future__ import annotations

import torch

NOISE_PRIORS = ("none", "gaussian")


def noise_prior(first_stage) -> str:
    """The prior the UNet was trained with: "gaussian" for a first stage that says so, else "none"."""
    config = getattr(first_stage, "config", None)
    return str(getattr(config, "noise_prior", None) or "none")


def zero_output(unet) -> None:
    """Start the UNet's correction at zero (the prior alone), as the first training step expects."""
    torch.nn.init.zeros_(unet.conv_out.weight)
    if unet.conv_out.bias is not None:
        torch.nn.init.zeros_(unet.conv_out.bias)


def predict_noise(
    unet,
    z_t: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prior: str = "none",
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """ε̂(z_t, t): the UNet's output, plus sqrt(1 - ᾱ_t) z_t under the Gaussian prior. `class_labels`
    (N,): the category indices of a class-conditional UNet (`null_label(unet)`: none given); None for a
    UNet without classes."""
    t = t.to(z_t.device)
    if t.ndim == 0:
        t = t.expand(z_t.shape[0])
    out = unet(z_t, t, class_labels=class_labels).sample
    if prior == "gaussian":
        scale = (1.0 - alphas_cumprod.to(z_t.device)[t.long()]).sqrt().to(z_t.dtype)
        out = out + scale.view(-1, *([1] * (z_t.ndim - 1))) * z_t
    return out


def is_class_conditional(unet) -> bool:
    return getattr(unet.config, "num_class_embeds", None) is not None


def null_label(unet) -> int:
    """The class of a class-conditional UNet that stands for "no category given" (the last one)."""
    return int(unet.config.num_class_embeds) - 1
