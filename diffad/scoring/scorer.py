"""`AnomalyScorer`: the detection settings and the calibration statistics, saved with a pipeline.

It is a pipeline component (a `ModelMixin`), so `save_pretrained` writes its settings to
`scorer/config.json` and its statistics to `scorer/diffusion_pytorch_model.safetensors`, and a trained
folder detects with its own settings. It turns residual maps into one anomaly map per image:
smooth each residual, standardise it with the statistics of good images (when calibrated),
weight and sum; the image score is the maximum of the (optionally average-pooled) map.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

from diffad.errors import ConfigError
from diffad.scoring.feature_head import make_head
from diffad.scoring.residuals import PIXEL_NORMS
from diffad.scoring.smoothing import average_pool, gaussian_blur

# The order of the rows of the calibration buffers.
RESIDUALS = ("pixel", "ssim", "latent", "feature")
# Latent-space residuals that need no decoder (the feature first stage has none): their statistics
# live in `latent_calibration`, saved once calibrated (older folders load as before).
LATENT_RESIDUALS = ("latent_cosine", "latent_norm", "denoise", "score")
# Residuals that compare a decoded reconstruction with the input.
NEEDS_DECODER = ("pixel", "ssim", "feature")
# Distances from normal, like the fitted maps: they count when higher, whatever `deviation` says.
DISTANCES = ("latent_norm", "denoise", "score")
# Maps of the input's own features, fitted at calibration; each has a calibration buffer of its own.
FITTED_MAPS = {"feature_gaussian": "gaussian_calibration", "feature_head": "head_calibration"}
SAMPLERS = ("ddim", "ddpm")
NOISE_KINDS = ("simplex", "gaussian")
CALIBRATIONS = ("none", "global", "per_pixel")
DEVIATIONS = ("higher", "lower", "both")
# The rows of a category's calibration statistics (`category_calibration`), every map in one buffer.
CATEGORY_ROWS = (*RESIDUALS, *FITTED_MAPS, *LATENT_RESIDUALS)
# What a category of a many-category model may set for itself (its `category_settings` entry).
CATEGORY_KEYS = (
    "calibration", "deviation", "threshold_f1", "threshold_fpr", "threshold_fpr_target",
    *(f"{name}_weight" for name in CATEGORY_ROWS),
)  # fmt: skip


def resolve_category(
    categories: list[str] | None, category: str | None, what: str = "this model"
) -> str | None:
    """`category` checked against a model's `categories`: None stays None (the category-free fallback);
    an unknown name is an error listing the known ones."""
    if category is None:
        return None
    known = list(categories or [])
    if not known:
        raise ConfigError(
            f"{what} does not record which category it was fitted on, so it takes no category; "
            f"leave category out (got {category!r})"
        )
    if category not in known:
        raise ConfigError(f"{what} knows no category {category!r}; its categories: {', '.join(known)}")
    return category


def check_strengths(strength: float | list[float]) -> list[float]:
    values = [strength] if isinstance(strength, int | float) else list(strength)
    if not values or any(not 0.0 < float(s) <= 1.0 for s in values):
        raise ConfigError(
            f"strength must be in (0, 1] (0.25 noises a quarter of the schedule), got {strength}"
        )
    return [float(s) for s in values]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


@dataclass
class DetectionSettings:
    strengths: list[float]
    num_inference_steps: int
    noise: str
    sampler: str
    num_ensemble: int


class AnomalyScorer(ModelMixin, ConfigMixin):
    """Detection settings (config) and calibration statistics (buffers) of an anomaly detection pipeline.

    Args:
        resolution: side of the square working resolution (images are resized to it).
        strength: fraction of the noise schedule to noise to; a list runs one pass per strength.
        num_inference_steps: denoising steps run from the starting timestep down to 0.
        noise: "simplex" (AnoDDPM) or "gaussian".
        sampler: "ddim" (deterministic, few steps) or "ddpm" (stochastic steps with `noise`).
        num_ensemble: noise draws per strength; residuals are averaged over strengths and draws.
        pixel_weight, ssim_weight, latent_weight, feature_weight: weights of the residual maps.
        latent_cosine_weight: 1 - cosine similarity of the input's and the denoised latents per position.
        latent_norm_weight: the input latent's norm per position; with a position-whitened feature first
            stage this is PaDiM's Mahalanobis distance, computed from the latents for free.
        denoise_weight: the UNet's noise-prediction error per position, averaged over
            `denoise_timesteps` and `num_ensemble` noise draws: the model's own measure of how unlikely
            the input is, with no denoising loop.
        score_weight: the norm of the UNet's noise prediction on the clean input latent at each of
            `denoise_timesteps` (over sqrt(1 - ᾱ_t), the score's norm), averaged: deterministic.
        denoise_timesteps: the timesteps `denoise` and `score` use.
        pixel_norm: "l1" or "l2" over channels.
        feature_layers: which stages of the feature extractor to compare (None: all).
        feature_normalization: "auto" (ImageNet statistics for transformers models, else [-1, 1]),
            "none" or "imagenet".
        smoothing_sigma: Gaussian smoothing of each residual, in working-resolution pixels.
        score_pooling: side of the average pool applied before the maximum (1: none).
        calibration: "none", "global" or "per_pixel" (set by `AnomalyDetectionPipeline.calibrate`).
        calibration_std_floor: per-pixel standard deviations are floored by this fraction of the
            global one, so that a pixel that barely varied among the good images does not explode.
        deviation: which (standardised) residuals count as anomalous: "higher" than on good images
            (a defect the model does not reproduce), "lower" (a defect easier to reproduce than the
            good texture, e.g. a smooth patch in random texture, as DAGM's), or "both" (|z|; useful
            once calibrated). Applied to each reconstruction residual before weighting (not to
            feature_gaussian, a distance from normal that counts when higher).
        feature_gaussian_weight: weight of the PaDiM-style map (`diffad.scoring.feature_gaussian`): the
            Mahalanobis distance of the input's features to per-position Gaussians fitted on good images
            by `calibrate`. Used only with a feature extractor and once fitted; 0 leaves it out.
        feature_gaussian_dim: dimensions of the seeded random projection of the features (0: all).
        feature_gaussian_epsilon: added to each covariance's diagonal.
        feature_gaussian_seed: seed of the projection.
        feature_gaussian_resolution: side the images are resized to for these features (0: the working
            resolution). Pretrained features want detail: on DAGM at 128 px the features of 256 px
            inputs find the defects far better than those of the 128 px working images.
        feature_gaussian_channels, feature_gaussian_grid: the fitted Gaussians' feature channels and
            (h, w) grid, written by `calibrate` (they size the buffers when a folder is loaded).
        feature_head_weight: weight of the feature head's map (`diffad.scoring.feature_head`): a defect
            probability per position from a small network on the same features, trained on synthetic
            defects by `calibrate`. Used only with a feature extractor and once trained; 0 leaves it out.
        feature_head_hidden: channels of the head's first layer.
        feature_head_channels, feature_head_grid: the trained head's input channels and (h, w) grid,
            written by `calibrate`.
        threshold_f1, threshold_fpr, threshold_fpr_target, default_threshold: the image thresholds saved
            by `diffad fit` (see `diffad.scoring.thresholds`; None: not fitted) and which one gives the
            pipeline's verdicts ("f1" or "fpr").
        categories: the categories of the good images the model was fitted on (None: not recorded).
            With two or more (one model for many categories, ADer's protocol) each category may have its
            own calibration statistics (`category_calibration`), weights, deviation and thresholds
            (`category_settings`, name -> {setting: value}), used inside `use_category(name)`; the
            settings above are the category-free fallback.
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 256,
        strength: float | list[float] = 0.25,
        num_inference_steps: int = 8,
        noise: str = "simplex",
        sampler: str = "ddim",
        num_ensemble: int = 1,
        pixel_weight: float = 1.0,
        pixel_norm: str = "l1",
        ssim_weight: float = 1.0,
        latent_weight: float = 1.0,
        feature_weight: float = 1.0,
        latent_cosine_weight: float = 0.0,
        latent_norm_weight: float = 0.0,
        denoise_weight: float = 0.0,
        score_weight: float = 0.0,
        denoise_timesteps: list[int] | None = None,
        latent_calibrated: bool = False,
        feature_layers: list[int] | None = None,
        feature_normalization: str = "auto",
        smoothing_sigma: float = 4.0,
        score_pooling: int = 1,
        calibration: str = "none",
        calibration_std_floor: float = 0.1,
        deviation: str = "higher",
        feature_gaussian_weight: float = 0.0,
        feature_gaussian_dim: int = 64,
        feature_gaussian_epsilon: float = 0.01,
        feature_gaussian_seed: int = 0,
        feature_gaussian_resolution: int = 0,
        feature_gaussian_channels: int = 0,
        feature_gaussian_grid: list[int] | None = None,
        feature_head_weight: float = 0.0,
        feature_head_hidden: int = 128,
        feature_head_channels: int = 0,
        feature_head_grid: list[int] | None = None,
        threshold_f1: float | None = None,
        threshold_fpr: float | None = None,
        threshold_fpr_target: float = 0.01,
        default_threshold: str = "fpr",
        categories: list[str] | None = None,
        category_settings: dict[str, dict] | None = None,
    ):
        super().__init__()
        names = list(categories or [])
        if len(set(names)) != len(names):
            raise ConfigError(f"categories must be distinct, got {names}")
        unknown = sorted(set(category_settings or {}) - set(names))
        if unknown:
            raise ConfigError(f"category_settings for categories the scorer does not have: {unknown}")
        for name, values in (category_settings or {}).items():
            extra = sorted(set(values) - set(CATEGORY_KEYS))
            if extra:
                raise ConfigError(f"category_settings[{name!r}] has unknown settings {extra}")
        check_strengths(strength)
        check_choice("noise", noise, NOISE_KINDS)
        check_choice("sampler", sampler, SAMPLERS)
        check_choice("pixel_norm", pixel_norm, PIXEL_NORMS)
        check_choice("calibration", calibration, CALIBRATIONS)
        check_choice("deviation", deviation, DEVIATIONS)
        check_choice("default_threshold", default_threshold, ("f1", "fpr"))
        if resolution < 8 or num_inference_steps < 1 or num_ensemble < 1 or score_pooling < 1:
            raise ConfigError(
                "resolution must be >= 8 and num_inference_steps, num_ensemble, score_pooling >= 1; got "
                f"{resolution}, {num_inference_steps}, {num_ensemble}, {score_pooling}"
            )
        weights = (
            pixel_weight, ssim_weight, latent_weight, feature_weight, feature_gaussian_weight, feature_head_weight,
            latent_cosine_weight, latent_norm_weight, denoise_weight, score_weight,
        )  # fmt: skip
        if any(not 0 <= int(t) < 1000 for t in (denoise_timesteps or [])):
            raise ConfigError(f"denoise_timesteps must lie in 0..999, got {denoise_timesteps}")
        if min(weights) < 0 or smoothing_sigma < 0:
            raise ConfigError("residual weights and smoothing_sigma must be >= 0")
        if feature_head_hidden < 2:
            raise ConfigError(f"feature_head_hidden must be at least 2, got {feature_head_hidden}")
        # Mean 0 and std 1 leave a residual unchanged: the statistics of an uncalibrated scorer.
        shape = (len(RESIDUALS), resolution, resolution)
        self.register_buffer("calibration_mean", torch.zeros(shape))
        self.register_buffer("calibration_std", torch.ones(shape))
        latent = torch.stack([torch.zeros(shape[1:]), torch.ones(shape[1:])]).repeat(
            len(LATENT_RESIDUALS), 1, 1, 1
        )
        self.register_buffer("latent_calibration", latent, persistent=bool(latent_calibrated))
        # feature_gaussian has buffers of its own, saved only once fitted: folders saved before it
        # existed, or without it, load as before (no missing or mismatched keys).
        channels = int(feature_gaussian_channels)
        k = channels if not 0 < feature_gaussian_dim < channels else int(feature_gaussian_dim)
        positions = int(torch.tensor(feature_gaussian_grid or [0]).prod()) if channels else 0
        neutral = torch.stack([torch.zeros(shape[1:]), torch.ones(shape[1:])])
        self.register_buffer("gaussian_calibration", neutral, persistent=channels > 0)
        self.register_buffer("gaussian_projection", torch.zeros(channels, k), persistent=channels > 0)
        self.register_buffer("gaussian_mean", torch.zeros(positions, k), persistent=channels > 0)
        self.register_buffer("gaussian_precision", torch.zeros(positions, k, k), persistent=channels > 0)
        # The feature head likewise: weights and buffers exist once trained.
        head_channels = int(feature_head_channels)
        head_grid = tuple(feature_head_grid or (0, 0))
        self.register_buffer("head_calibration", neutral.clone(), persistent=head_channels > 0)
        self.register_buffer(
            "head_mean", torch.zeros(head_channels, *head_grid), persistent=head_channels > 0
        )
        self.register_buffer("head_std", torch.ones(head_channels, *head_grid), persistent=head_channels > 0)
        self.feature_head = make_head(head_channels, int(feature_head_hidden)) if head_channels else None
        # Per-category statistics exist for a model of several categories only (saved with it).
        many = len(names) if len(names) > 1 else 0
        per_category = torch.stack([torch.zeros(shape[1:]), torch.ones(shape[1:])])
        per_category = per_category.expand(many, len(CATEGORY_ROWS), *per_category.shape).contiguous()
        self.register_buffer("category_calibration", per_category, persistent=many > 0)
        self._category: str | None = None  # the category `use_category` is inside (None: the fallback)

    # ---- categories ---------------------------------------------------------------------------------

    @property
    def categories(self) -> list[str]:
        return list(self.config.categories or [])

    @property
    def active_category(self) -> str | None:
        return self._category

    @contextmanager
    def use_category(self, category: str | None):
        """Inside, the scorer uses `category`'s own statistics and settings where it has them (None: the
        category-free ones). An unknown category is a ConfigError listing the known ones."""
        category = resolve_category(self.categories, category, "this model")
        if len(self.categories) < 2:
            category = None  # a model of one category: its settings are that category's
        previous, self._category = self._category, category
        try:
            yield self
        finally:
            self._category = previous

    def _category_values(self) -> dict:
        if self._category is None:
            return {}
        return dict((self.config.category_settings or {}).get(self._category, {}))

    def setting(self, key: str):
        """A setting of the active category when it has its own, else the config's."""
        values = self._category_values()
        return values[key] if key in values else getattr(self.config, key)

    def active_config(self) -> dict:
        """The config with the active category's own settings over it."""
        return {**dict(self.config), **self._category_values()}

    def update_settings(self, **values) -> None:
        """Set config values, or, inside `use_category`, that category's own (per-category keys only)."""
        if self._category is None:
            self.register_to_config(**values)
            return
        bad = sorted(set(values) - set(CATEGORY_KEYS))
        if bad:
            raise ConfigError(f"{bad} cannot differ between categories; set them without a category")
        settings = {k: dict(v) for k, v in (self.config.category_settings or {}).items()}
        settings.setdefault(self._category, {}).update(values)
        self.register_to_config(category_settings=settings)

    def settings(
        self, strength=None, num_inference_steps=None, noise=None, num_ensemble=None
    ) -> DetectionSettings:
        """The detection settings of a call: each given value, else the config's, checked."""
        config = self.config
        settings = DetectionSettings(
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
        return settings

    @property
    def strengths(self) -> list[float]:
        return check_strengths(self.config.strength)

    def weight(self, name: str) -> float:
        return float(self.setting(f"{name}_weight"))

    @property
    def denoise_timesteps(self) -> list[int]:
        return [int(t) for t in (self.config.denoise_timesteps or (20, 50, 100, 200))]

    @property
    def feature_gaussian_resolution(self) -> int:
        return int(self.config.feature_gaussian_resolution) or int(self.config.resolution)

    @property
    def has_feature_gaussian(self) -> bool:
        """Whether `calibrate` has fitted the feature Gaussians."""
        return int(self.config.feature_gaussian_channels) > 0

    @property
    def has_feature_head(self) -> bool:
        """Whether `calibrate` has trained the feature head."""
        return int(self.config.feature_head_channels) > 0

    def fitted_maps(self, in_use: bool = True) -> list[str]:
        """The maps of the input's own features that `calibrate` has fitted (Gaussians, head); with
        `in_use`, only those with a weight above 0."""
        fitted = {"feature_gaussian": self.has_feature_gaussian, "feature_head": self.has_feature_head}
        return [n for n in FITTED_MAPS if fitted[n] and (not in_use or self.weight(n) > 0)]

    @staticmethod
    def available_residuals(*, latent: bool, feature: bool, decoder: bool = True) -> list[str]:
        """The residuals a pipeline can compute: latent ones need a first stage, feature an extractor,
        pixel, ssim and feature a decoder; denoise and score need only the UNet."""
        available = {"pixel": decoder, "ssim": decoder, "latent": latent, "feature": feature and decoder}
        available.update(latent_cosine=latent, latent_norm=latent, denoise=True, score=True)
        return [n for n in (*RESIDUALS, *LATENT_RESIDUALS) if available[n]]

    def active_residuals(self, *, latent: bool, feature: bool, decoder: bool = True) -> list[str]:
        """The residuals with a non-zero weight that the pipeline can compute (the fitted maps once fitted)."""
        wanted = [n for n in (*RESIDUALS, *LATENT_RESIDUALS) if self.weight(n) > 0]
        if not decoder and any(n in NEEDS_DECODER for n in wanted):
            bad = [n for n in wanted if n in NEEDS_DECODER]
            raise ConfigError(
                f"{', '.join(bad)} residual(s) compare a decoded reconstruction with the input, and this "
                "pipeline's first stage (a feature encoder) has no decoder: set "
                f"{', '.join(n + '_weight=0' for n in bad)} in the scorer (configure_scorer), or train an "
                "autoencoder first stage (diffad fit --first_stage kl|vq)"
            )
        names = [
            n
            for n in self.available_residuals(latent=latent, feature=feature, decoder=decoder)
            if n in wanted
        ]
        if feature:
            names += self.fitted_maps()
        if not names:
            raise ConfigError(
                "every usable residual has weight 0: set pixel_weight, ssim_weight, latent_weight "
                "(needs a vae) or feature_weight (needs a feature_extractor) above 0"
            )
        return names

    def set_feature_gaussian(
        self, projection: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor, grid: tuple[int, int]
    ) -> None:
        """Store fitted feature Gaussians (see `diffad.scoring.feature_gaussian`) and record their sizes
        in the config, so that a saved folder rebuilds buffers of the same shapes before loading them."""
        device = self.calibration_mean.device
        self.register_buffer("gaussian_projection", projection.float().contiguous().to(device))
        self.register_buffer("gaussian_mean", mean.float().contiguous().to(device))
        self.register_buffer("gaussian_precision", precision.float().contiguous().to(device))
        self.register_buffer("gaussian_calibration", self.gaussian_calibration)  # saved from now on
        self.register_to_config(
            feature_gaussian_channels=int(projection.shape[0]), feature_gaussian_grid=list(grid)
        )

    def set_feature_head(self, head: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store a trained feature head (see `diffad.scoring.feature_head`) with its per-position input
        statistics, and record its sizes in the config so that a saved folder rebuilds it before loading."""
        device = self.calibration_mean.device
        self.feature_head = head.to(device)
        self.register_buffer("head_mean", mean.float().contiguous().to(device))
        self.register_buffer("head_std", std.float().contiguous().to(device))
        self.register_buffer("head_calibration", self.head_calibration)  # saved from now on
        self.register_to_config(
            feature_head_channels=int(mean.shape[0]), feature_head_grid=list(mean.shape[1:])
        )

    def fitted_feature_maps(self, embedding: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """The fitted maps in `names` of a feature embedding (N, D, h, w): name -> (N, h, w)."""
        from diffad.scoring.feature_gaussian import mahalanobis_map
        from diffad.scoring.feature_head import head_map

        maps = {}
        if "feature_gaussian" in names:
            maps["feature_gaussian"] = mahalanobis_map(
                embedding, self.gaussian_projection, self.gaussian_mean, self.gaussian_precision
            )
        if "feature_head" in names:
            maps["feature_head"] = head_map(self.feature_head, embedding, self.head_mean, self.head_std)
        return maps

    def smooth(self, residual: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(residual, float(self.config.smoothing_sigma))

    def standardise(self, name: str, residual: torch.Tensor) -> torch.Tensor:
        if self.setting("calibration") == "none":
            return residual
        if "calibration" in self._category_values():
            index = self.categories.index(self._category)
            mean, std = self.category_calibration[index, CATEGORY_ROWS.index(name)].to(residual)
        elif name in FITTED_MAPS:
            mean, std = getattr(self, FITTED_MAPS[name]).to(residual)
        elif name in LATENT_RESIDUALS:
            mean, std = self.latent_calibration[LATENT_RESIDUALS.index(name)].to(residual)
        else:
            row = RESIDUALS.index(name)
            mean = self.calibration_mean[row].to(residual)
            std = self.calibration_std[row].to(residual)
        return (residual - mean) / std

    def combine(
        self,
        residuals: dict[str, torch.Tensor],
        weights: dict[str, float] | None = None,
        deviation: str | None = None,
    ) -> torch.Tensor:
        """Weighted sum of the standardised, already smoothed residual maps (N, H, W). `weights` and
        `deviation` replace the config's for this call (settings being compared)."""
        total = None
        deviation = check_choice("deviation", deviation or self.setting("deviation"), DEVIATIONS)
        missing = [k for k, w in (weights or {}).items() if w > 0 and k not in residuals]
        if missing:
            raise ConfigError(f"weights given for residuals that were not computed: {', '.join(missing)}")
        for name, residual in residuals.items():
            weight = self.weight(name) if weights is None else float(weights.get(name, 0.0))
            if weight == 0:
                continue
            z = self.standardise(name, residual)
            if name not in FITTED_MAPS and name not in DISTANCES:
                z = -z if deviation == "lower" else z.abs() if deviation == "both" else z
            term = weight * z
            total = term if total is None else total + term
        if total is None:
            raise ConfigError(f"no residual among {', '.join(residuals)} has a weight above 0")
        return total

    def score(self, maps: torch.Tensor) -> torch.Tensor:
        """Image scores (N,): the maximum of each (average-pooled) map."""
        return average_pool(maps, int(self.config.score_pooling)).amax(dim=(-2, -1))

    def set_calibration(self, mode: str, moments: dict[str, tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        """Store statistics from `moments[name] = (count, sum, sum of squares)` of (H, W) maps.

        Residuals missing from `moments` keep mean 0 and std 1.
        """
        check_choice("calibration mode", mode, CALIBRATIONS)
        # Per-pixel statistics of a few images are noise: a pixel where the 8 good images happened
        # to agree gets a tiny std and turns any later image into a huge z-score. Each pixel's mean
        # and variance are shrunk towards the global ones as if `prior` images had shown the global
        # statistics there: with 8 images that is two thirds global, with 500 it is 97% per pixel.
        prior = 16
        # One row per residual, then one per fitted map (each kept in a buffer of its own).
        rows = len(CATEGORY_ROWS)
        mean = torch.zeros(rows, *self.calibration_mean.shape[1:])
        std = torch.ones(rows, *self.calibration_std.shape[1:])
        for name, (count, total, total_sq) in moments.items():
            if count < 1:
                raise ConfigError("calibration needs at least one good image")
            row = CATEGORY_ROWS.index(name)
            total, total_sq = total.double(), total_sq.double()
            pixel_mean = total / count
            pixel_var = (total_sq / count - pixel_mean**2).clamp_min(0)
            global_mean = pixel_mean.mean()
            global_var = (total_sq.mean() / count - global_mean**2).clamp_min(0)
            global_std = global_var.sqrt().clamp_min(1e-6)
            if mode == "per_pixel":
                floor = float(self.config.calibration_std_floor) * global_std
                share = count / (count + prior)
                pixel_mean_shrunk = share * pixel_mean + (1 - share) * global_mean
                # The variance about the shrunk mean: the per-pixel spread plus the mean's shift.
                pixel_var = share * (pixel_var + (pixel_mean - pixel_mean_shrunk) ** 2) + (1 - share) * (
                    global_var + (global_mean - pixel_mean_shrunk) ** 2
                )
                mean[row] = pixel_mean_shrunk.float()
                std[row] = (pixel_var + floor**2).sqrt().clamp_min(1e-6).float()
            elif mode == "global":
                mean[row] = global_mean.float()
                std[row] = global_std.float()
        if self._category is not None:  # this category's own statistics; the fallback's stay
            index = self.categories.index(self._category)
            self.category_calibration[index].copy_(torch.stack([mean, std], dim=1))
            self.update_settings(calibration=mode)
            return
        self.calibration_mean.copy_(mean[: len(RESIDUALS)])
        self.calibration_std.copy_(std[: len(RESIDUALS)])
        for row, buffer in enumerate(FITTED_MAPS.values(), start=len(RESIDUALS)):
            getattr(self, buffer).copy_(torch.stack([mean[row], std[row]]))
        start = len(RESIDUALS) + len(FITTED_MAPS)
        self.latent_calibration.copy_(torch.stack([mean[start:], std[start:]], dim=1))
        if any(name in LATENT_RESIDUALS for name in moments):
            self.register_buffer("latent_calibration", self.latent_calibration)  # saved from now on
            self.register_to_config(latent_calibrated=True)
        self.register_to_config(calibration=mode)
