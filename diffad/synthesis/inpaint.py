"""Diffusion inpainting with a controllable anomaly strength, after RealNet's SDAS (Zhang et al., CVPR 2024).

A model trained on good images denoises only the masked part of the latent: the rest is replaced, at
every step, by the clean latent noised to that step (as RePaint does), so the patch grows to fit its
surroundings. SDAS pushes the patch off the normal distribution by sampling with the variance
inflated by a factor (1 + s): after each scheduler step the masked latent gets extra Gaussian noise
of standard deviation sqrt(s) times the step's posterior standard deviation. s = 0 (anomaly_strength)
gives a normal-looking patch; larger s, stranger ones. Pixels outside the mask are pasted back
from the input, so they are exactly the input's.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from diffad.errors import ConfigError
from diffad.synthesis.common import SyntheticDefect, as_generator, resolve_foreground, rounded
from diffad.synthesis.masks import noise_mask


def randn_tensor(shape, generator: torch.Generator, device, dtype) -> torch.Tensor:
    # Drawn on the generator's device, then moved: the same seed gives the same noise on any device.
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(
        device, dtype
    )


def draw_noise(kind: str, shape, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Unit-variance noise of `kind`: "gaussian", or "simplex" for models trained on it (AnoDDPM)."""
    if kind == "gaussian":
        return randn_tensor(shape, generator, device, dtype)
    if kind != "simplex":
        raise ConfigError(f'noise must be "gaussian" or "simplex", not {kind!r}')
    from diffad.noise import sample_noise

    return sample_noise(kind, shape, generator=generator, device=device, dtype=dtype)


def _encode(vae, x: torch.Tensor) -> torch.Tensor:
    if vae is None:
        return x
    encoded = vae.encode(x)
    # AutoencoderKL gives a distribution (its mean keeps the encoding deterministic); VQModel a tensor.
    latents = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * getattr(vae.config, "scaling_factor", 1.0)


def _decode(vae, z: torch.Tensor) -> torch.Tensor:
    if vae is None:
        return z
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return vae.decode(z / getattr(vae.config, "scaling_factor", 1.0) + shift).sample


def _posterior_std(scheduler, t: int, t_prev: int) -> float:
    """Standard deviation of q(z_prev | z_t, z_0) between two (possibly distant) steps."""
    acp = scheduler.alphas_cumprod
    a_t = float(acp[t])
    a_prev = float(acp[t_prev]) if t_prev >= 0 else 1.0
    var = (1 - a_prev) / max(1 - a_t, 1e-12) * (1 - a_t / a_prev)
    return max(var, 0.0) ** 0.5


def _latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Any masked pixel marks its latent cell, so the regenerated latent covers the whole mask.
    return F.adaptive_max_pool2d(mask, size)


@torch.no_grad()
def diffusion_inpaint(
    image: torch.Tensor,
    generator: torch.Generator | int | None = None,
    *,
    unet,
    scheduler,
    vae=None,
    mask: torch.Tensor | None = None,
    foreground=None,
    anomaly_strength: float = 1.0,
    strength: float = 1.0,
    num_inference_steps: int = 50,
    noise: str = "gaussian",
    mask_noise: str = "perlin",
) -> SyntheticDefect:
    """Regenerate the masked part of `image` ((C,H,W) or (N,C,H,W) in [-1, 1]) with a diffusion model.

    `mask` ((1,H,W) or (N,1,H,W), 0/1) is drawn from thresholded noise when not given. `strength` is the
    fraction of the schedule the masked latent is noised to (1 = pure noise), `anomaly_strength` the
    SDAS variance inflation s. `noise` is the kind the model was trained with ("gaussian" or "simplex");
    it is used for the forward noise, the SDAS extra noise and (with schedulers that take
    `variance_noise`) the sampling noise. With `vae=None` the UNet works on pixels. Returns
    `SyntheticDefect(image, mask)` with `.params`.
    """
    if unet is None or scheduler is None:
        raise ConfigError(
            "the diffusion method needs a trained model: give --model DIR (a saved pipeline "
            "with unet and scheduler, and vae for a latent model)"
        )
    if anomaly_strength < 0 or not 0 < strength <= 1:
        raise ConfigError(
            f"anomaly_strength must be >= 0 and strength in (0, 1]; got {anomaly_strength}, {strength}"
        )
    generator = as_generator(generator)
    single = image.dim() == 3
    x = image[None] if single else image
    n, _, h, w = x.shape
    weight = next(unet.parameters())
    device, dtype = weight.device, weight.dtype
    x = x.to(device=device, dtype=dtype)

    params = [
        {
            "method": "diffusion",
            "anomaly_strength": anomaly_strength,
            "strength": strength,
            "num_inference_steps": num_inference_steps,
            "noise": noise,
        }
        for _ in range(n)
    ]
    if mask is None:
        masks = []
        for i in range(n):
            fg = resolve_foreground(
                x[i],
                foreground[i]
                if isinstance(foreground, torch.Tensor) and foreground.dim() == 4
                else foreground,
            )
            m, mp = noise_mask((h, w), generator, foreground=fg, noise=mask_noise, device=device)
            masks.append(m)
            params[i].update(mp)
        pixel_mask = torch.stack(masks)
    else:
        pixel_mask = torch.as_tensor(mask, device=device).float().reshape(n, 1, h, w)
        pixel_mask = (pixel_mask > 0.5).to(dtype)
        if not bool(pixel_mask.flatten(1).any(1).all()):
            raise ConfigError("every mask given to diffusion_inpaint must have at least one pixel set")

    z0 = _encode(vae, x)
    if z0.shape[1] != unet.config.in_channels:
        raise ConfigError(
            f"the UNet takes {unet.config.in_channels} channels but the "
            f"{'VAE latents have' if vae is not None else 'images have'} {z0.shape[1]}: "
            "use the unet and vae of one saved pipeline"
        )
    m = _latent_mask(pixel_mask, tuple(z0.shape[-2:])).to(dtype)

    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    start = min(len(timesteps) - 1, int(round(len(timesteps) * (1 - strength))))
    timesteps = timesteps[start:]

    def sample(shape=z0.shape):
        return draw_noise(noise, shape, generator, device, dtype)

    # Schedulers that take the sampling noise (DDIM, diffad's Noise*Scheduler) get it in our kind.
    takes_noise = noise != "gaussian" and "variance_noise" in inspect.signature(scheduler.step).parameters
    z = scheduler.add_noise(z0, sample(), timesteps[:1].repeat(n))
    for i, t in enumerate(timesteps):
        eps = unet(z, t).sample
        # diffusers refuses a generator together with variance_noise: one or the other.
        step_kw = {"variance_noise": sample()} if takes_noise else {"generator": generator}
        step = scheduler.step(eps, t, z, **step_kw).prev_sample
        t_prev = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1
        if anomaly_strength > 0 and t_prev >= 0:
            step = step + (anomaly_strength**0.5) * _posterior_std(scheduler, int(t), t_prev) * sample()
        if t_prev >= 0:
            known = scheduler.add_noise(
                z0, sample(), torch.full((n,), t_prev, device=device, dtype=torch.long)
            )
        else:
            known = z0
        z = m * step + (1 - m) * known

    decoded = _decode(vae, z).clamp(-1, 1)
    if decoded.shape[-2:] != x.shape[-2:]:
        raise ConfigError(
            f"the model gives {tuple(decoded.shape[-2:])} images for {h}x{w} input: "
            "use image sizes that are a multiple of the VAE's downsampling (--resolution)"
        )
    out = torch.where(pixel_mask > 0, decoded, x).to(image.dtype).to(image.device)
    out_mask = pixel_mask.to(image.dtype).to(image.device)
    for p in params:
        p["anomaly_strength"] = rounded(float(anomaly_strength))
    if single:
        return SyntheticDefect(out[0], out_mask[0], params[0])
    return SyntheticDefect(out, out_mask, params)
