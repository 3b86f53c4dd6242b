"""AnomalyDetectionPipeline: find defects by noising an image part of the way and denoising it back.

image ──VAE.encode──▶ z0 ──noise to t(strength)──▶ zt ──UNet + scheduler, t → 0──▶ ẑ0 ──VAE.decode──▶ x̂
(x, x̂, z0, ẑ0) ──residuals──▶ smoothed, standardised, weighted, summed ──▶ anomaly map ──max──▶ score

With `vae=None` the same pipeline runs in pixel space (AnoDDPM). The detection settings and the
calibration statistics live in the `scorer` component, so a saved folder detects with its own settings.
"""

from __future__ import annotations

import inspect
import os
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
from diffad.noise import sample_noise
from diffad.schedulers import NoiseDDIMScheduler, NoiseDDPMScheduler, partial_timesteps
from diffad.scoring import feature_gaussian as fg
from diffad.scoring import feature_head as fh
from diffad.scoring.features import extract_features
from diffad.scoring.images import format_outputs, resize, to_tensor_list
from diffad.scoring.residuals import feature_residual, latent_residual, pixel_residual, ssim_residual
from diffad.scoring.scorer import (
    CALIBRATIONS,
    FITTED_MAPS,
    NOISE_KINDS,
    SAMPLERS,
    AnomalyScorer,
    check_choice,
    check_strengths,
)

_SCHEDULERS = {"ddim": NoiseDDIMScheduler, "ddpm": NoiseDDPMScheduler}
PIXEL_RESIDUALS = ("pixel", "ssim", "feature")  # compare decoded reconstructions with the input


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
    """

    anomaly_maps: np.ndarray | torch.Tensor | list
    anomaly_scores: np.ndarray | torch.Tensor
    reconstructions: np.ndarray | torch.Tensor | list[PIL.Image.Image] | None


@dataclass
class _Settings:
    strengths: list[float]
    num_inference_steps: int
    noise: str
    sampler: str
    num_ensemble: int


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
        vae: AutoencoderKL | VQModel | None = None,
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
        from pathlib import Path

        from diffad.detectors import check_pipeline_folder

        folder = Path(pretrained_model_name_or_path)
        if (folder / "model_index.json").is_file():
            check_pipeline_folder(folder)  # names a missing component; diffusers' message does not
        elif (folder / "detector_config.json").is_file():
            raise ConfigError(
                f"{folder} holds a reference detector (PaDiM or PatchCore), not a pipeline: load it with "
                f"diffad.load_detector({str(folder)!r}), which loads every folder diffad fit writes"
            )
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
    def resolution(self) -> int:
        return int(self.scorer.config.resolution)

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
            None for a setting means the scorer's config.
        """
        settings = self._settings(strength, num_inference_steps, noise, num_ensemble)
        check_choice("output_type", output_type, ("np", "pt", "pil"))
        images = to_tensor_list(image, self.image_channels)
        seeds = self._image_seeds(generator, len(images))
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
        return AnomalyDetectionOutput(*outputs)

    @torch.no_grad()
    def calibrate(
        self,
        good_images,
        generator: torch.Generator | list[torch.Generator] | None = None,
        mode: str = "per_pixel",
        batch_size: int = 8,
        gaussian_images=None,
        feature_head_steps: int = 300,
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
        only the statistics are taken again."""
        check_choice("calibration mode", mode, CALIBRATIONS)
        fit_images = good_images if gaussian_images is None else gaussian_images
        features = self.feature_extractor is not None
        gaussians = features and self.scorer.weight("feature_gaussian") > 0
        head = features and self.scorer.weight("feature_head") > 0
        if gaussian_images is None:
            # Statistics taken on the images just fitted are far too small: recalibrating the shipped
            # model on 8 cells refitted its Gaussians on them and every later score became ~1e6.
            gaussians = gaussians and not self.scorer.has_feature_gaussian
            head = head and not self.scorer.has_feature_head
        embeddings = None
        if gaussians and head:  # both fit on the same images: extract their features once
            embeddings = self._embeddings(to_tensor_list(fit_images, self.image_channels), batch_size)
        if gaussians:
            self.fit_feature_gaussian(fit_images, batch_size, embeddings=embeddings)
        if head:
            seed = generator.initial_seed() % 2**31 if isinstance(generator, torch.Generator) else 0
            self.fit_feature_head(
                fit_images, seed=seed, steps=feature_head_steps, batch_size=batch_size, embeddings=embeddings
            )
        if mode == "none":
            self.scorer.set_calibration("none", {})
            return self
        settings = self._settings(None, None, None, None)
        images = to_tensor_list(good_images, self.image_channels)
        seeds = self._image_seeds(generator, len(images))
        moments: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
        for start, batch in self._batches(images, batch_size):
            residuals, _ = self._residual_maps(batch, settings, seeds[start : start + len(batch)])
            for name, residual in residuals.items():
                residual = residual.double().cpu()
                count, total, total_sq = moments.get(name, (0, 0.0, 0.0))
                moments[name] = (
                    count + len(residual),
                    total + residual.sum(0),
                    total_sq + (residual**2).sum(0),
                )
        self.scorer.set_calibration(mode, moments)
        return self

    @torch.no_grad()
    def residual_maps(
        self, image, generator: torch.Generator | list[torch.Generator] | None = None, batch_size: int = 8
    ) -> dict[str, torch.Tensor]:
        """Each residual with a weight above 0, smoothed but neither standardised nor weighted, at the
        working resolution: name -> (N, R, R). `scorer.combine` turns them into maps; comparing
        settings on them costs one detection pass, not one per setting."""
        settings = self._settings(None, None, None, None)
        images = to_tensor_list(image, self.image_channels)
        seeds = self._image_seeds(generator, len(images))
        parts: dict[str, list[torch.Tensor]] = {}
        for start, batch in self._batches(images, batch_size):
            residuals, _ = self._residual_maps(batch, settings, seeds[start : start + len(batch)])
            for name, residual in residuals.items():
                parts.setdefault(name, []).append(residual.float().cpu())
        return {name: torch.cat(maps) for name, maps in parts.items()}

    @torch.no_grad()
    def fit_feature_gaussian(
        self, good_images, batch_size: int = 8, embeddings: torch.Tensor | None = None
    ) -> AnomalyDetectionPipeline:
        """Fit the scorer's per-position feature Gaussians (the "feature_gaussian" residual) on good images
        (or on their `embeddings`, (N, D, h, w) from `_embeddings`, when already computed)."""
        if self.feature_extractor is None:
            raise ConfigError("the feature_gaussian residual needs a feature_extractor in the pipeline")
        config = self.scorer.config
        moments, projection = fg.GaussianMoments(), None
        if embeddings is None:
            batches = self._embedding_batches(to_tensor_list(good_images, self.image_channels), batch_size)
        else:
            batches = embeddings.split(batch_size)
        for embedding in batches:
            if projection is None:
                projection = fg.projection_matrix(
                    embedding.shape[1], int(config.feature_gaussian_dim), int(config.feature_gaussian_seed)
                )
            moments.add(fg.project(embedding, projection), embedding.shape[-2:])
        mean, precision = moments.gaussians(float(config.feature_gaussian_epsilon))
        self.scorer.set_feature_gaussian(projection, mean, precision, moments.grid)
        return self

    def _progress(self, iterable=None, total=None, desc=None):
        """A tqdm bar with a description, honouring `set_progress_bar_config`."""
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, **{"desc": desc, **getattr(self, "_progress_bar_config", {})})

    def _embedding_batches(self, images: list[torch.Tensor], batch_size: int):
        """The fitted maps' embedding of each batch of `images`, (n, D, h, w)."""
        for _, batch in self._batches(images, batch_size):  # its bar counts the batches
            yield self._embedding(self._working_size(batch, self.scorer.feature_gaussian_resolution))

    @torch.no_grad()
    def _embeddings(self, images: list[torch.Tensor], batch_size: int) -> torch.Tensor:
        return torch.cat([e.float().cpu() for e in self._embedding_batches(images, batch_size)])

    def fit_feature_head(
        self,
        good_images,
        seed: int = 0,
        defects_per_image: int = 3,
        steps: int = 300,
        batch_size: int = 8,
        train_batch_size: int = 32,
        embeddings: torch.Tensor | None = None,
    ) -> AnomalyDetectionPipeline:
        """Train the scorer's feature head (the "feature_head" residual) on good images and
        `defects_per_image` synthetic defects made on each (a fresh one each time), for `steps` batches
        of `train_batch_size`. `embeddings`: the good images' (from `_embeddings`), when already
        computed. The same seed gives the same head."""
        from diffad.synthesis.methods import synthesize

        if self.feature_extractor is None:
            raise ConfigError("the feature_head residual needs a feature_extractor in the pipeline")
        if defects_per_image < 1 or steps < 1 or train_batch_size < 1:
            raise ConfigError("defects_per_image, steps and train_batch_size must be at least 1")
        images = to_tensor_list(good_images, self.image_channels)
        good = self._embeddings(images, batch_size) if embeddings is None else embeddings
        mean, std = fh.position_statistics(good)
        defects, masks = [], []
        for k in self._progress(
            range(defects_per_image * len(images)), desc="feature head: synthetic defects"
        ):
            generator = torch.Generator().manual_seed((seed * 1_000_003 + k) % 2**63)
            defect = synthesize(images[k % len(images)], fh.SYNTHESIS_METHOD, generator)
            defects.append(defect.image)
            masks.append(defect.mask.reshape(defect.image.shape[-2:]))
        defective = self._embeddings(defects, batch_size)
        grid = tuple(good.shape[-2:])
        # float16 halves the memory of a few thousand embeddings; standardised values need no more.
        inputs = ((torch.cat([good, defective]) - mean) / std).half()
        targets = torch.cat([torch.zeros(len(good), 1, *grid), fh.defect_targets(torch.stack(masks), grid)])
        head = fh.make_head(int(mean.shape[0]), int(self.scorer.config.feature_head_hidden))
        with torch.enable_grad(), self._progress(total=steps, desc="feature head: training") as bar:
            fh.train_head(
                head,
                inputs,
                targets,
                steps=steps,
                batch_size=train_batch_size,
                generator=torch.Generator().manual_seed(seed),
                progress=bar,
            )
        self.scorer.set_feature_head(head.to(self.unet.dtype), mean, std)
        return self

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        return fg.pooled_embedding(self._features(x))

    def _fitted_maps(self, originals: list[torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
        """The maps of the input's own features in `names` (feature Gaussians, feature head), at the
        working resolution: name -> (N, R, R). The features are extracted once for both."""
        scorer = self.scorer
        embedding = self._embedding(self._working_size(originals, scorer.feature_gaussian_resolution))
        maps = {}
        if "feature_gaussian" in names:
            maps["feature_gaussian"] = fg.mahalanobis_map(
                embedding, scorer.gaussian_projection, scorer.gaussian_mean, scorer.gaussian_precision
            )
        if "feature_head" in names:
            maps["feature_head"] = fh.head_map(
                scorer.feature_head, embedding, scorer.head_mean, scorer.head_std
            )
        size = (self.resolution, self.resolution)
        return {name: resize(m[:, None].float(), size)[:, 0] for name, m in maps.items()}

    def _working_size(self, originals: list[torch.Tensor], side: int | None = None) -> torch.Tensor:
        size = (side or self.resolution,) * 2
        return torch.cat([resize(im[None], size) for im in originals]).to(
            device=self._execution_device, dtype=self.unet.dtype
        )

    def _settings(self, strength, num_inference_steps, noise, num_ensemble) -> _Settings:
        config = self.scorer.config
        settings = _Settings(
            strengths=check_strengths(config.strength if strength is None else strength),
            num_inference_steps=int(
                config.num_inference_steps if num_inference_steps is None else num_inference_steps
            ),
            noise=check_choice("noise", noise or config.noise, NOISE_KINDS),
            sampler=check_choice("sampler", config.sampler, SAMPLERS),
            num_ensemble=int(config.num_ensemble if num_ensemble is None else num_ensemble),
        )
        if settings.num_inference_steps < 1 or settings.num_ensemble < 1:
            raise ConfigError("num_inference_steps and num_ensemble must be at least 1")
        if self.resolution % self.vae_scale_factor:
            raise ConfigError(
                f"the scorer's resolution {self.resolution} must be a multiple of the vae's downsampling "
                f"factor {self.vae_scale_factor}"
            )
        return settings

    def _batches(self, images: list[torch.Tensor], batch_size: int):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        for start in self.progress_bar(range(0, len(images), batch_size)):
            yield start, images[start : start + batch_size]

    def _image_seeds(self, generator, count: int) -> list[int]:
        """One seed per image, drawn from `generator`: an image's noise then depends neither on the
        batch size nor on the other images in the call."""
        high = 2**62
        if isinstance(generator, list):
            if len(generator) != count:
                raise ConfigError(f"got {len(generator)} generators for {count} images; give one per image")
            return [int(torch.randint(high, (1,), generator=g, device=g.device)) for g in generator]
        if generator is None:
            generator = torch.Generator()
            generator.seed()  # fresh entropy, not the global random state
        return torch.randint(high, (count,), generator=generator, device=generator.device).tolist()

    def _residual_maps(
        self, originals: list[torch.Tensor], settings: _Settings, seeds: list[int], decode: bool = False
    ):
        """Smoothed residual maps (name -> (N, R, R)), averaged over the ensemble, and the first
        reconstruction (N, C, R, R) in [-1, 1]: decoded when `decode`, or a residual or the segmentation
        head needs it (else None)."""
        device = self._execution_device
        x = self._working_size(originals)
        names = self.scorer.active_residuals(
            latent=self.vae is not None, feature=self.feature_extractor is not None
        )
        generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
        z0 = self._encode(x)
        features = self._features(x) if "feature" in names else None
        fitted = [n for n in names if n in FITTED_MAPS]  # of the input alone: once, not per reconstruction
        names = [n for n in names if n not in FITTED_MAPS]
        sums: dict[str, torch.Tensor] = self._fitted_maps(originals, fitted) if fitted else {}
        first = None
        pixels = any(n in PIXEL_RESIDUALS for n in names)
        for strength in settings.strengths:
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

    def _make_scheduler(self, sampler: str):
        """A fresh scheduler of the sampler's class with this pipeline's noise schedule (stepping
        changes a scheduler's state, so the component itself is never stepped)."""
        cls = _SCHEDULERS[sampler]
        accepted = inspect.signature(cls.__init__).parameters
        return cls.from_config({k: v for k, v in self.scheduler.config.items() if k in accepted})

    def _denoise(self, z0, strength: float, settings: _Settings, generators) -> torch.Tensor:
        scheduler = self._make_scheduler(settings.sampler)
        _, timesteps = partial_timesteps(scheduler, strength, settings.num_inference_steps)
        noise = self._draw(settings.noise, z0, generators)
        # After t_start forward steps the sample sits at timestep t_start - 1, the first of `timesteps`.
        z = scheduler.add_noise(z0, noise, timesteps[:1].repeat(z0.shape[0]).to(z0.device))
        for t in timesteps:
            model_input = scheduler.scale_model_input(z, t)
            model_output = self.unet(model_input, t.to(z.device)).sample
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
        return feature_residual(features, self._features(x_hat), size)
