"""The autoencoder's training losses: L1 + SSIM reconstruction, KL or VQ terms, optional PatchGAN.

The adversarial part follows Taming Transformers (`taming/modules/losses/vqperceptual.py`): a
PatchGAN discriminator with hinge loss, switched on at `disc_start`, whose generator term is
weighted adaptively by the ratio of the reconstruction and adversarial gradient norms at the
decoder's last layer. No perceptual (LPIPS) term: it would need downloaded weights; SSIM stands in
for the structural part.
"""

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, VQModel
from diffusers.configuration_utils import register_to_config
from torch import nn

# ---------------------------------------------------------------------------------------------
# Structural similarity


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, *, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-pixel SSIM of two (N, C, H, W) batches, averaged over channels: shape (N, H, W).

    Gaussian-weighted local statistics as Wang et al. (2004) and `skimage.metrics.structural_similarity`
    with `gaussian_weights=True, use_sample_covariance=False`; images in [-1, 1] have `data_range=2`.
    Borders are reflect-padded so that the map has the input's size; away from the border it equals
    scikit-image's map. Differentiable.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    channels = x.shape[1]
    window = _gaussian_window(window_size, sigma, channels, x)
    pad = window_size // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"

    def local_mean(t):
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode=mode), window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x * mu_x
    var_y = local_mean(y * y) - mu_y * mu_y
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=1)


def ssim(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """Mean SSIM per image, shape (N,): 1 for identical images. See `ssim_map`."""
    return ssim_map(x, y, **kwargs).flatten(1).mean(dim=1)


def reconstruction_loss(
    reconstructions: torch.Tensor, images: torch.Tensor, *, ssim_weight: float = 1.0
) -> torch.Tensor:
    """Mean absolute error plus `ssim_weight * (1 - SSIM)`, a scalar (images in [-1, 1])."""
    loss = (reconstructions - images).abs().mean()
    if ssim_weight:
        loss = loss + ssim_weight * (1 - ssim(reconstructions, images)).mean()
    return loss


# ---------------------------------------------------------------------------------------------
# Regularisers: KL (AutoencoderKL) or vector quantisation (VQModel)


def kl_loss(posterior) -> torch.Tensor:
    """KL divergence of a diffusers DiagonalGaussianDistribution from N(0, I), summed over latent
    elements and averaged over the batch (as LDM, which weights it by about 1e-6)."""
    return posterior.kl().mean()


def autoencode(vae, images: torch.Tensor, *, generator: torch.Generator | None = None, sample_posterior=True):
    """Encode and decode a batch; returns `(reconstructions, regularization_loss)`.

    AutoencoderKL: decodes a posterior sample drawn with `generator` (or its mode) and returns the
    KL term. VQModel: decodes the quantised latents and returns diffusers' VQ loss,
    `|sg(z_q) - z|^2 + 0.25 * |z_q - sg(z)|^2`: the commitment term (pulls the encoder) plus a quarter
    of the codebook term (pulls the code vectors). That is `VectorQuantizer(legacy=True)`, the
    weighting Taming Transformers' VQGAN was trained with (the VQ-VAE paper puts 0.25 on the other
    term). Gradients reach the encoder through the straight-through estimator.
    """
    if isinstance(vae, VQModel):
        out = vae(images)
        return out.sample, out.commit_loss.mean()
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
    return vae.decode(latents).sample, kl_loss(posterior)


def last_decoder_layer(vae) -> torch.Tensor:
    """The weight the adaptive adversarial weight is measured at (the decoder's output conv)."""
    return vae.decoder.conv_out.weight


# ---------------------------------------------------------------------------------------------
# PatchGAN discriminator (Taming's NLayerDiscriminator)


class PatchDiscriminator(ModelMixin, ConfigMixin):
    """A PatchGAN discriminator: one real/fake logit per image patch (70 x 70 px with 3 layers).

    Taming Transformers' `NLayerDiscriminator` (after pix2pix), with its N(0, 0.02) initialisation.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(
                    base_channels * prev, base_channels * mult, 4, stride=stride, padding=1, bias=False
                ),
                nn.BatchNorm2d(base_channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """Taming's weight: |grad nll| / |grad g_loss| at the decoder's last layer, detached."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(weight, 0.0, max_weight).detach()


def autoencoder_loss(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    regularization: torch.Tensor,
    *,
    step: int,
    regularization_weight: float,
    ssim_weight: float = 1.0,
    discriminator: PatchDiscriminator | None = None,
    last_layer: torch.Tensor | None = None,
    disc_start: int = 0,
    disc_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The autoencoder's (generator's) loss and a dict of its parts for logging.

    reconstruction + regularization_weight * regularization (+ adaptive_weight * disc_weight *
    generator hinge term, once `step >= disc_start` and a discriminator is given; KL: ~1e-6, VQ: 1.0).
    """
    rec = reconstruction_loss(reconstructions, images, ssim_weight=ssim_weight)
    loss = rec + regularization_weight * regularization
    logs = {"rec_loss": rec.item(), "reg_loss": regularization.item()}
    if discriminator is not None and step >= disc_start:
        if last_layer is None:
            raise ValueError(
                "autoencoder_loss needs last_layer (last_decoder_layer(vae)) with a discriminator"
            )
        g_loss = -discriminator(reconstructions).mean()
        if torch.is_grad_enabled():
            weight = adaptive_weight(rec, g_loss, last_layer)
        else:  # evaluation: no graph to measure gradients on
            weight = torch.zeros((), device=rec.device)
        loss = loss + disc_weight * weight * g_loss
        logs.update(g_loss=g_loss.item(), d_weight=weight.item())
    logs["loss"] = loss.item()
    return loss, logs


def discriminator_loss(
    discriminator: PatchDiscriminator,
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    *,
    step: int,
    disc_start: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss of the discriminator on real images and (detached) reconstructions; 0 before disc_start."""
    logits_real = discriminator(images.detach())
    logits_fake = discriminator(reconstructions.detach())
    factor = 1.0 if step >= disc_start else 0.0
    loss = factor * hinge_d_loss(logits_real, logits_fake)
    logs = {
        "d_loss": loss.item(),
        "logits_real": logits_real.mean().item(),
        "logits_fake": logits_fake.mean().item(),
    }
    return loss, logs
