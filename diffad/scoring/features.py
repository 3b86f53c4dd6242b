"""Feature maps from any vision backbone: a module returning a tensor or a list of tensors, or a
transformers vision model (through `output_hidden_states` / `feature_maps`)."""

from __future__ import annotations

import os

import torch
from torch import nn

from diffad.errors import ConfigError

FEATURE_NORMALIZATIONS = ("auto", "none", "imagenet")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def is_transformers_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.")


def input_channels(model: nn.Module) -> int | None:
    """The number of image channels the model takes: its config's, else its first convolution's."""
    config = getattr(model, "config", None)
    channels = getattr(config, "num_channels", None) if config is not None else None
    if channels is None and config is not None:
        channels = getattr(config, "in_channels", None)
    if channels is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = conv.in_channels if conv is not None else None
    return int(channels) if channels is not None else None


def _prepare(model: nn.Module, images: torch.Tensor, normalization: str) -> torch.Tensor:
    channels = input_channels(model)
    if channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif channels == 1 and images.shape[1] == 3:
        images = images.mean(dim=1, keepdim=True)
    if normalization == "auto":
        normalization = "imagenet" if is_transformers_model(model) else "none"
    if normalization == "imagenet":
        if images.shape[1] != 3:
            raise ConfigError("feature_normalization 'imagenet' needs a 3-channel feature extractor")
        mean = images.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return ((images + 1) / 2 - mean) / std
    if normalization != "none":
        raise ConfigError(
            f"feature_normalization must be one of {FEATURE_NORMALIZATIONS}, got {normalization!r}"
        )
    return images


def extract_features(
    model: nn.Module, images: torch.Tensor, layers: list[int] | None = None, normalization: str = "auto"
) -> list[torch.Tensor]:
    """Feature maps (N, C_i, H_i, W_i) of `images` (N, C, H, W in [-1, 1]).

    `layers` picks stages by index (negative counts from the deepest); None keeps them all.
    """
    param = next(model.parameters(), None)
    x = _prepare(model, images, normalization)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    if is_transformers_model(model):
        out = model(pixel_values=x, output_hidden_states=True, return_dict=True)
    else:
        out = model(x)
    if torch.is_tensor(out):
        maps = [out]
    elif getattr(out, "feature_maps", None) is not None:  # transformers backbones, EfficientNetLiteFeatures
        maps = list(out.feature_maps)
    elif getattr(out, "hidden_states", None) is not None:
        maps = list(out.hidden_states)
    else:
        maps = list(out) if isinstance(out, list | tuple) else []
    maps = [m for m in (maps or []) if torch.is_tensor(m) and m.ndim == 4]
    if not maps:
        raise ConfigError(
            f"{type(model).__name__} gave no (N, C, H, W) feature maps; use a convolutional backbone "
            "(a module returning a tensor or a list of tensors, or a transformers vision model)"
        )
    if layers:
        try:
            maps = [maps[i] for i in layers]
        except IndexError:
            raise ConfigError(
                f"feature_layers {layers} is out of range: the extractor gives {len(maps)} stages"
            ) from None
    return maps


def load_feature_extractor(path: str | os.PathLike) -> nn.Module:
    """A transformers vision model from a local folder only: nothing is downloaded."""
    if not os.path.isdir(path):
        raise ConfigError(
            f"feature extractor folder {path} does not exist; give a local folder written by save_pretrained"
        )
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load a feature extractor from {path}: {err}") from err
