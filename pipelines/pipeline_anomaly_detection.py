"""AnomalyDetectionPipeline: find defects by noising an image part of the way and denoising it back.

image ──VAE.encode──▶ z0 ──noise to t(strength)──▶ zt ──UNet + scheduler, t → 0──▶ ẑ0 ──VAE.decode──▶ x̂
(x, x̂, z0, ẑ0) ──residuals──▶ smoothed, standardised, weighted, summed ──▶ anomaly map ──max──▶ score

With `vae=None` the same pipeline runs in pixel space (AnoDDPM). The detection settings and the
calibration statistics live in the `scorer` component, so a saved folder detects with its own settings.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DModel, VQModel
from diffusers.schedulers import DDIMScheduler, DDPMScheduler
from diffusers.utils import BaseOutput
from torch import nn

from diffad.errors import ConfigError
from diffad.models import downsample_factor
from diffad.models.denoiser import is_class_conditional, noise_prior, null_label, predict_noise
from diffad.models.feature_encoder import FeatureEncoder
from diffad.noise import sample_noise
from diffad.schedulers import fresh_scheduler, partial_timesteps
from diffad.scoring import feature_gaussian as fg
from diffad.scoring import fitting, thresholds
from diffad.scoring.features import extract_features
from diffad.scoring.images import format_outputs, image_seeds, resize, to_tensor_list
from diffad.scoring.latent_scores import direct_residual
from diffad.scoring.residuals import (
    feature_residual,
    latent_cosine_residual,
    latent_residual,
    pixel_residual,
    ssim_residual,
)
from diffad.scoring.scorer import FITTED_MAPS, AnomalyScorer, DetectionSettings, check_choice

PIXEL_RESIDUALS = ("pixel", "ssim", "feature")  # compare decoded reconstructions with the input
DIRECT = ("latent_norm", "denoise", "score")  # of the input latent alone: no denoising loop


@dataclass
class AnomalyDetectionOutput(BaseOutput):
    """
    Args:
        anomaly_maps: one map per image at that image's size; larger is more anomalous. "np": (N, H, W)
            float32 array, "pt": tensor, "pil": list of 32-bit float ("F") images; a list when the
            images differ in size.
        anomaly_scores: (N,) image scores, the maximum of each (pooled) map at the working resolution.
        reconstructions: the denoised images in [0, 1] (first strength, first noise draw), resized to
            each image's size: "np" (N, H, W, C), "pt" (N, C, H, W), "pil" list of images; None when
            called with `output_reconstructions=False` and no residual needed them.
        is_defective: (N,) bools, score >= the scorer's default saved threshold (`diffad.scoring.
            thresholds`); None when the model saved none. Not part of the tuple output.
    """

    anomaly_maps: np.ndarray | torch.Tensor | list
    anomaly_scores: np.ndarray | torch.Tensor
    reconstructions: np.ndarray | torch.Tensor | list[PIL.Image.Image] | None
    is_defective: np.ndarray | torch.Tensor | None = None


class AnomalyDetectionPipeline(DiffusionPipeline):
    r"""
    Anomaly maps and scores from partial-noise reconstruction with a (latent) diffusion model.

    Args:
        unet: predicts the noise on (scaled) latents, or on pixels when `vae` is None.
        scheduler: a DDIM or DDPM scheduler; its config gives the noise schedule, and the scorer's
            `sampler` setting picks which of the two steps are taken.
        scorer: an `AnomalyScorer` with the detection settings and calibration statistics.
        vae: an `AutoencoderKL` (the encoder's mean is used) or `VQModel`; latents are multiplied by
            its `scaling_factor` (after subtracting `shift_factor` when set). None: pixel space.
        feature_extractor: optional backbone for feature residuals: a module returning a tensor or a
            list of (N, C, H, W) tensors (e.g. `diffad.models.efficientnet.EfficientNetLiteFeatures`),
            or a transformers vision model (its hidden states / feature maps are used).
        segmentation_head: optional `diffad.models.SegmentationHead` (train_seg.py): when present, the
            map is its defect logits for (image, reconstruction), plus its `residual_weight` times the
            calibrated residual map.
    """

    _optional_components = ["vae", "feature_extractor", "segmentation_head"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDIMScheduler | DDPMScheduler,
        scorer: AnomalyScorer,
        vae: AutoencoderKL | VQModel | FeatureEncoder | None = None,
        feature_extractor: nn.Module | None = None,
        segmentation_head: nn.Module | None = None,
    ):
        super().__init__()
        self.register_modules(
            unet=unet,
            scheduler=scheduler,
            scorer=scorer,
            vae=vae,
            feature_extractor=feature_extractor,
            segmentation_head=segmentation_head,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """As `DiffusionPipeline.from_pretrained`, but offline unless `local_files_only=False` is passed:
        every component, a transformers feature extractor included, loads from the local folder."""
        from diffad.detectors import check_pipeline_source

        check_pipeline_source(pretrained_model_name_or_path)  # names what is missing; diffusers does not
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ---- shapes -------------------------------------------------------------------------------------

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels if self.vae is not None else self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return downsample_factor(self.vae) if self.vae is not None else 1

    @property
    def has_decoder(self) -> bool:
        """False for a feature first stage: no reconstructions, only latent-space residuals."""
        return self.vae is None or getattr(self.vae, "has_decoder", True)

    @property
    def resolution(self) -> int:
        return int(self.scorer.config.resolution)

    @property
    def categories(self) -> list[str]:
        """The categories the model was fitted on (several: one model for many, given at detection)."""
        return self.scorer.categories

    @contextmanager
    def use_category(self, category: str | None):
        """Detect, calibrate or score as `category` (None: the category-free fallback): its own
        statistics, weights and thresholds in the scorer, its Gaussians in a class-conditional first
        stage, its class for a class-conditional UNet. An unknown name lists the known ones."""
        with self.scorer.use_category(category):  # the scorer holds which category is active
            yield self

    # ---- detection ----------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image,
        strength: float | list[float] | None = None,
        num_inference_steps: int | None = None,
        noise: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        num_ensemble: int | None = None,
        batch_size: int = 8,
        output_reconstructions: bool = True,
        category: str | None = None,
    ) -> AnomalyDetectionOutput | tuple:
        r"""
        Args:
            image: a PIL image, numpy array ((H, W), (H, W, C), (N, H, W, C), uint8/uint16 or float in
                [0, 1]), tensor ((H, W), (C, H, W), (N, C, H, W) in [-1, 1]), image path, or a list of
                them, of any sizes. Images are resized to the scorer's resolution and converted to the
                model's channels; maps come back at each image's size.
            strength: fraction of the schedule to noise to, in (0, 1], or a list (an ensemble).
            num_inference_steps: denoising steps from the starting timestep.
            noise: "simplex" or "gaussian".
            generator: a torch.Generator (or one per image) for reproducible noise.
            output_type: "np", "pt" or "pil" (see `AnomalyDetectionOutput`).
            return_dict: return an `AnomalyDetectionOutput` rather than a tuple.
            num_ensemble: noise draws per strength, averaged.
            batch_size: images per forward pass.
            output_reconstructions: False skips decoding the denoised latents when no residual needs
                them (the latent and feature-Gaussian residuals do not): the largest cost of a small
                latent pipeline. `reconstructions` is then None (those decoded anyway still come back).
            category: the images' category, for a model of several categories (ADer's protocol; see
                `categories`); None uses its category-free fallback. A model of one category needs none.
            None for a setting means the scorer's config.
        """
        with self.use_category(category):
            settings = self._settings(strength, num_inference_steps, noise, num_ensemble)
            check_choice("output_type", output_type, ("np", "pt", "pil"))
            images = to_tensor_list(image, self.image_channels)
            seeds = image_seeds(generator, len(images))
            maps, scores, reconstructions = [], [], []
            for start, batch in self._batches(images, batch_size):
                residuals, x_hat = self._residual_maps(
                    batch,
                    settings,
                    seeds[start : start + len(batch)],
                    decode=output_reconstructions or self.segmentation_head is not None,
                )
                batch_maps = self.scorer.combine(residuals)
                if self.segmentation_head is not None:
                    batch_maps = self._head_maps(batch, x_hat, batch_maps)
                scores.append(self.scorer.score(batch_maps).float().cpu())
                for i, (original, anomaly_map) in enumerate(zip(batch, batch_maps)):
                    size = tuple(original.shape[-2:])
                    maps.append(resize(anomaly_map[None, None].float(), size)[0, 0].cpu())
                    if x_hat is not None:
                        reconstructions.append(resize(x_hat[i : i + 1].float(), size)[0].cpu())
            outputs = format_outputs(maps, torch.cat(scores), reconstructions, output_type)
            self.maybe_free_model_hooks()
            if not return_dict:
                return outputs
            verdicts = thresholds.pipeline_verdicts(self.scorer, torch.cat(scores), output_type)
            return AnomalyDetectionOutput(*outputs, is_defective=verdicts)

    @torch.no_grad()
    def calibrate(
        self,
        good_images,
        generator: torch.Generator | list[torch.Generator] | None = None,
        mode: str = "per_pixel",
        batch_size: int = 8,
        gaussian_images=None,
        feature_head_steps: int = 300,
        category: str | None = None,
    ) -> AnomalyDetectionPipeline:
        """Record the mean and standard deviation of each residual over good images, per pixel or
        global, in the scorer; later maps are standardised by them (z-scores, comparable across
        residuals, images and categories). Uses the scorer's current settings: detect with the same
        ones (a strength passed to `__call__` changes the residuals' scale). Returns the pipeline.

        With a feature extractor and `feature_gaussian_weight` > 0, the feature Gaussians are fitted
        first, on `gaussian_images` (default: `good_images`; better, other good images than those the
        statistics come from, since images a Gaussian was fitted on lie closer to it than unseen ones).
        With `feature_head_weight` > 0 the feature head is trained next, on the same images and
        synthetic defects made on them, for `feature_head_steps` (seeded by `generator`'s initial seed).
        Gaussians or a head already fitted (a trained folder) are kept unless `gaussian_images` is given:
        only the statistics are taken again. The fitting itself lives in `diffad.scoring.fitting`.
        With `category` (a model of several categories), the statistics are that category's own, from
        its good images; the fitted Gaussians and head are shared."""
        with self.use_category(category):
            self.scorer.update_settings(threshold_f1=None, threshold_fpr=None)  # of old statistics
            return fitting.calibrate(
                self, good_images, generator, mode, batch_size, gaussian_images, feature_head_steps
            )

    @torch.no_grad()
    def residual_maps(
        self,
        image,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch_size: int = 8,
        category: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each residual with a weight above 0, smoothed but neither standardised nor weighted, at the
        working resolution: name -> (N, R, R). `scorer.combine` turns them into maps; comparing
        settings on them costs one detection pass, not one per setting."""
        parts: dict[str, list[torch.Tensor]] = {}
        for residuals in self.residual_batches(image, generator, batch_size, category):
            for name, residual in residuals.items():
                parts.setdefault(name, []).append(residual.float().cpu())
        return {name: torch.cat(maps) for name, maps in parts.items()}

    def residual_batches(self, image, generator=None, batch_size: int = 8, category: str | None = None):
        """`residual_maps` one batch at a time (name -> (n, R, R) per batch), with the scorer's settings
        (those of `category` when given, else of the category `use_category` is inside, if any)."""
        with self.use_category(category) if category is not None else nullcontext():
            settings = self._settings(None, None, None, None)
            images = to_tensor_list(image, self.image_channels)
            seeds = image_seeds(generator, len(images))
            for start, batch in self._batches(images, batch_size):
                yield self._residual_maps(batch, settings, seeds[start : start + len(batch)])[0]

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        return fg.pooled_embedding(self._features(x))

    def _fitted_maps(self, originals: list[torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
        """The maps of the input's own features in `names` (feature Gaussians, feature head), at the
        working resolution: name -> (N, R, R). The features are extracted once for both."""
        embedding = self._embedding(self._working_size(originals, self.scorer.feature_gaussian_resolution))
        maps = self.scorer.fitted_feature_maps(embedding, names)
        return {name: resize(m[:, None].float(), (self.resolution,) * 2)[:, 0] for name, m in maps.items()}

    def _working_size(self, originals: list[torch.Tensor], side: int | None = None) -> torch.Tensor:
        size = (side or self.resolution,) * 2
        return torch.cat([resize(im[None], size) for im in originals]).to(
            device=self._execution_device, dtype=self.unet.dtype
        )

    def _settings(self, strength, num_inference_steps, noise, num_ensemble) -> DetectionSettings:
        if self.resolution % self.vae_scale_factor:
            raise ConfigError(
                f"the scorer's resolution {self.resolution} must be a multiple of the vae's downsampling "
                f"factor {self.vae_scale_factor}"
            )
        return self.scorer.settings(strength, num_inference_steps, noise, num_ensemble)

    def _batches(self, images: list[torch.Tensor], batch_size: int):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        for start in self.progress_bar(range(0, len(images), batch_size)):
            yield start, images[start : start + batch_size]

    def _residual_maps(
        self,
        originals: list[torch.Tensor],
        settings: DetectionSettings,
        seeds: list[int],
        decode: bool = False,
    ):
        """Smoothed residual maps (name -> (N, R, R)), averaged over the ensemble, and the first
        reconstruction (N, C, R, R) in [-1, 1]: decoded when `decode` and there is a decoder, or when a
        residual needs it (else None). Only what the residuals in use need is run: no UNet call when
        every weight is on the fitted maps, no denoising loop for the latent-only ones."""
        x = self._working_size(originals)
        names = self.scorer.active_residuals(
            latent=self.vae is not None, feature=self.feature_extractor is not None, decoder=self.has_decoder
        )
        decode = decode and self.has_decoder
        generators = [torch.Generator(self._execution_device).manual_seed(seed) for seed in seeds]
        fitted = [n for n in names if n in FITTED_MAPS]  # of the input alone: once, not per reconstruction
        direct = [n for n in names if n in DIRECT]  # of the input latent and the UNet, no denoising loop
        names = [n for n in names if n not in FITTED_MAPS and n not in DIRECT]
        sums: dict[str, torch.Tensor] = self._fitted_maps(originals, fitted) if fitted else {}
        if not (names or direct or decode):
            return {n: self.scorer.smooth(m) for n, m in sums.items()}, None
        z0 = self._encode(x)
        size = tuple(x.shape[-2:])
        for name in direct:
            sums[name] = self._direct_residual(name, z0, settings, generators, size)
        features = self._features(x) if "feature" in names else None
        first = None
        pixels = any(n in PIXEL_RESIDUALS for n in names)
        for strength in settings.strengths if names or decode else []:
            for _ in range(settings.num_ensemble):
                z_hat = self._denoise(z0, strength, settings, generators)
                x_hat = self._decode(z_hat) if pixels or (first is None and decode) else None
                first = x_hat if first is None else first
                for name in names:
                    residual = self._residual(name, x, x_hat, z0, z_hat, features)
                    sums[name] = residual if name not in sums else sums[name] + residual
        members = {name: len(settings.strengths) * settings.num_ensemble for name in names}
        return {name: self.scorer.smooth(total / members.get(name, 1)) for name, total in sums.items()}, first

    def _head_maps(self, originals: list[torch.Tensor], x_hat: torch.Tensor, residual_map: torch.Tensor):
        """The segmentation head's map (N, R, R) for the images at working size and their reconstructions."""
        head = self.segmentation_head
        size = (self.resolution, self.resolution)
        x = torch.cat([resize(im[None], size) for im in originals]).to(device=x_hat.device, dtype=head.dtype)
        return head.anomaly_map(x, x_hat.to(head.dtype), residual_map).to(residual_map.dtype)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x
        category = self.scorer.active_category
        if category is not None and getattr(self.vae, "categories", None):  # its own Gaussians
            encoded = self.vae.encode(x.to(self.vae.dtype), category=category)
        else:
            encoded = self.vae.encode(x.to(self.vae.dtype))
        latent_dist = getattr(encoded, "latent_dist", None)
        h = latent_dist.mean if latent_dist is not None else encoded.latents
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((h - shift) * self.vae.config.scaling_factor).to(self.unet.dtype)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return z.clamp(-1, 1)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        h = (z / self.vae.config.scaling_factor + shift).to(self.vae.dtype)
        return self.vae.decode(h).sample.clamp(-1, 1).to(self.unet.dtype)

    def _draw(self, kind: str, like: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        shape = (1, *like.shape[1:])
        draws = [
            sample_noise(kind, shape, generator=g, device=like.device, dtype=like.dtype) for g in generators
        ]
        return torch.cat(draws)

    def _predict_noise(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction, with the Gaussian prior of a whitened first stage (`denoiser`)."""
        alphas = self.scheduler.alphas_cumprod
        labels = None
        if is_class_conditional(self.unet):
            category = self.scorer.active_category
            index = null_label(self.unet) if category is None else self.categories.index(category)
            labels = torch.full((z.shape[0],), index, device=z.device, dtype=torch.long)
        return predict_noise(self.unet, z, t, alphas, noise_prior(self.vae), labels)

    def _direct_residual(self, name: str, z0, settings: DetectionSettings, generators, size) -> torch.Tensor:
        """latent_norm, denoise or score of the input latent (`diffad.scoring.latent_scores`), (N, H, W)."""
        value = direct_residual(
            name,
            z0,
            self._predict_noise,
            self.scheduler.alphas_cumprod,
            self.scorer.denoise_timesteps,
            settings.num_ensemble,
            lambda: self._draw("gaussian", z0, generators),  # the Gaussian prior's noise
        )
        return resize(value[:, None], size)[:, 0]

    def _denoise(self, z0, strength: float, settings: DetectionSettings, generators) -> torch.Tensor:
        scheduler = fresh_scheduler(self.scheduler.config, settings.sampler)
        _, timesteps = partial_timesteps(scheduler, strength, settings.num_inference_steps)
        noise = self._draw(settings.noise, z0, generators)
        # After t_start forward steps the sample sits at timestep t_start - 1, the first of `timesteps`.
        z = scheduler.add_noise(z0, noise, timesteps[:1].repeat(z0.shape[0]).to(z0.device))
        for t in timesteps:
            model_input = scheduler.scale_model_input(z, t)
            model_output = self._predict_noise(model_input, t)
            # DDPM adds noise on every step but the last (DDIM with eta 0 never does): AnoDDPM's simplex.
            stochastic = settings.sampler == "ddpm" and int(t) > 0
            step_noise = self._draw(settings.noise, z, generators) if stochastic else None
            z = scheduler.step(model_output, t, z, variance_noise=step_noise).prev_sample
        return z

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        config = self.scorer.config
        return extract_features(
            self.feature_extractor, x, config.feature_layers, config.feature_normalization
        )

    def _residual(self, name: str, x, x_hat, z0, z_hat, features) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        if name == "pixel":
            return pixel_residual(x, x_hat, self.scorer.config.pixel_norm).float()
        if name == "ssim":
            return ssim_residual(x.float(), x_hat.float())
        if name == "latent":
            return latent_residual(z0, z_hat, size)
        if name == "latent_cosine":
            return latent_cosine_residual(z0, z_hat, size)
        return feature_residual(features, self._features(x_hat), size)
