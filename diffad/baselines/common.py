"""What PaDiM and PatchCore share: image batching, the pooled feature embedding, map post-processing,
and saving as a folder (`detector_config.json`, `detector.safetensors`, `feature_extractor/`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from diffad.errors import ConfigError
from diffad.files import atomic_write_with

CONFIG_NAME = "detector_config.json"
WEIGHTS_NAME = "detector.safetensors"
EXTRACTOR_FOLDER = "feature_extractor"


def image_to_tensor(image) -> torch.Tensor:
    """One image as (C, H, W) in [-1, 1]. Tensors are taken to be in [-1, 1] already (the datasets'
    convention); numpy floats in [0, 1] and uint8 in [0, 255] (diffusers' convention); PIL as is."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("L" if image.mode in ("L", "I", "I;16", "F", "1") else "RGB"))
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        tensor = torch.from_numpy(array * 2.0 - 1.0)
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        return image.float()[None] if image.ndim == 2 else image.float()
    raise ConfigError(f"cannot read an image from a {type(image).__name__}; pass PIL, numpy or a tensor")


def images_to_list(images) -> list[torch.Tensor]:
    """A batch tensor, a dataset-style dict, one image or a list of them -> list of (C, H, W) tensors."""
    if isinstance(images, dict):
        images = images["image"]
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.float())
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [image_to_tensor(x) for x in images]
    if isinstance(images, (list, tuple)):
        return [image_to_tensor(x) for x in images]
    return [image_to_tensor(images)]


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """(N, C, H, W) bilinear resize (antialiased when shrinking); a no-op at the same size."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def stack_images(images: list[torch.Tensor], resolution: int) -> torch.Tensor:
    """(B, C, resolution, resolution); grayscale images are repeated to 3 channels if colour ones are mixed in."""
    channels = max(im.shape[0] for im in images)
    return torch.cat([resize(im.expand(channels, -1, -1)[None], resolution) for im in images])


def iter_batches(data, resolution: int, batch_size: int):
    """Batches (B, C, resolution, resolution) from a DataLoader, a dataset of dicts, or plain images."""
    pending: list[torch.Tensor] = []
    for item in data:
        for image in images_to_list(item):
            pending.append(image)
            if len(pending) == batch_size:
                yield stack_images(pending, resolution)
                pending = []
    if pending:
        yield stack_images(pending, resolution)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, H, W) maps with reflected borders (truncated at 4 sigma)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(4 * sigma + 0.5))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


class FeatureDetector:
    """A detector on a frozen feature extractor. Subclasses implement `fit`, `_patch_scores`
    (embeddings (N, D, h, w) -> scores (N, h, w)) and `_state` / `_set_state` (tensors to save)."""

    def __init__(self, feature_extractor, **config):
        if not 0 <= config.get("border_pad", 0) < config["resolution"]:
            raise ConfigError(
                f"border_pad must be between 0 and resolution - 1, got {config.get('border_pad')}"
            )
        self.feature_extractor = feature_extractor.eval()
        self.config = config
        self.fitted_on: dict | None = None  # what `fit_baseline` trained on, kept in the saved config
        self.thresholds: dict | None = None  # set by `fit_baseline` (see diffad.scoring.thresholds)

    # --- features -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.feature_extractor.parameters()).device

    def to(self, device):
        self.feature_extractor.to(device)
        self._set_state({k: v.to(device) for k, v in self._state().items()})
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, R, R) in [-1, 1] -> (N, D, R/s, R/s): each stage 3x3 average-pooled, all upsampled
        to the finest stage's grid and concatenated. With `border_pad` > 0 the input is mirrored by that
        many pixels first and the features of the mirrored margin cropped away, so that the outermost
        cells see image content rather than the backbone's zero padding."""
        pad = self.config.get("border_pad", 0)
        x = images.to(self.device)
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        maps = self.feature_extractor(x).feature_maps
        # Reflect-padding before pooling keeps edge cells at the same scale as inner ones.
        pooled = [F.avg_pool2d(F.pad(f, (1, 1, 1, 1), mode="reflect"), 3, 1) for f in maps]
        grid = pooled[0].shape[-2:]
        emb = torch.cat(
            [pooled[0]]
            + [F.interpolate(p, size=grid, mode="bilinear", align_corners=False) for p in pooled[1:]],
            1,
        )
        if pad:
            cells = round(pad * grid[0] / x.shape[-2])
            emb = emb[..., cells : grid[0] - cells, cells : grid[1] - cells]
        return emb

    # --- detection ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image, output_type: str = "np", return_dict: bool = True, batch_size: int = 8):
        """Anomaly maps (N, H, W) at each input's size (a list when the sizes differ) and image scores
        (N,) = the maximum of the smoothed map, leaving out `score_border` pixels at each edge."""
        if output_type not in ("np", "pt"):
            raise ConfigError(f"output_type must be 'np' or 'pt', not {output_type!r}")
        inputs = images_to_list(image)
        resolution = self.config["resolution"]
        maps, scores = [], []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            x = stack_images(chunk, resolution)
            patch = self._patch_scores(self.embed(x)).float()
            full = resize(patch[:, None], resolution)[:, 0]
            full = gaussian_blur(full, self.config.get("sigma", 4.0))
            b = self.config.get("score_border", 0)
            inner = full[:, b : resolution - b, b : resolution - b] if b else full
            scores.append(inner.flatten(1).amax(1).cpu())
            maps.extend(resize(m[None, None], im.shape[-2:])[0, 0].cpu() for m, im in zip(full, chunk))
        scores = torch.cat(scores)
        same = len({tuple(m.shape) for m in maps}) == 1
        maps = torch.stack(maps) if same else maps
        if output_type == "np":
            maps = maps.numpy() if same else [m.numpy() for m in maps]
            scores = scores.numpy()
        if not return_dict:
            return maps, scores, None
        # The pipeline's output class, imported here: importing the pipelines (diffusers') is slow.
        from diffad.pipelines.pipeline_anomaly_detection import AnomalyDetectionOutput
        from diffad.scoring.thresholds import resolve, verdicts

        chosen = resolve(self)
        return AnomalyDetectionOutput(
            anomaly_maps=maps,
            anomaly_scores=scores,
            reconstructions=None,
            is_defective=verdicts(scores, chosen[1]) if chosen else None,
        )

    # --- saving ---------------------------------------------------------------------------------
    def save_pretrained(self, save_directory) -> None:
        """Writes the folder atomically file by file: temp names in the same folder, then os.replace."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        tmp_dir = folder / f".{EXTRACTOR_FOLDER}.tmp-{os.getpid()}"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        self.feature_extractor.save_pretrained(tmp_dir)
        target = folder / EXTRACTOR_FOLDER
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp_dir, target)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self._state().items()}
        atomic_write_with(folder / WEIGHTS_NAME, lambda p: save_file(state, str(p)))
        meta = {"class": type(self).__name__, **self.config}
        if self.fitted_on:
            meta["_fitted_on"] = self.fitted_on
        if self.thresholds:
            meta["_thresholds"] = self.thresholds
        atomic_write_with(folder / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))

    @classmethod
    def from_pretrained(cls, pretrained_path):
        from diffad.models.efficientnet import EfficientNetLiteFeatures

        folder = Path(pretrained_path)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise ConfigError(
                f"{config_file} not found: {folder} is not a saved {cls.__name__}; fit one first"
            )
        config = json.loads(config_file.read_text())
        if config.pop("class", None) != cls.__name__:
            raise ConfigError(f"{config_file} describes a different detector, not a {cls.__name__}")
        fitted_on = config.pop("_fitted_on", None)
        saved_thresholds = config.pop("_thresholds", None)
        if not (folder / WEIGHTS_NAME).is_file():
            raise ConfigError(f"{folder / WEIGHTS_NAME} is missing; refit the detector into {folder}")
        extractor = EfficientNetLiteFeatures.from_pretrained(folder / EXTRACTOR_FOLDER)
        detector = cls(extractor, **config)
        detector._set_state(load_file(str(folder / WEIGHTS_NAME)))
        detector.fitted_on = fitted_on
        detector.thresholds = saved_thresholds
        return detector


def chunked_min_distance(
    queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query row to its nearest bank row, and that row's index."""
    dists, idx = [], []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start : start + chunk], bank)
        best = d.min(dim=1)
        dists.append(best.values)
        idx.append(best.indices)
    return torch.cat(dists), torch.cat(idx)
