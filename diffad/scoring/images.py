"""Turning what users pass (PIL, numpy, torch, lists of mixed sizes) into model tensors, and back.

Conventions (as in Diffusers, except tensors, which follow `diffad.data.load_image`):
- PIL images and image paths: any mode `diffad.data.images` reads (16-bit and float included).
- numpy arrays: (H, W), (H, W, C) or (N, H, W, C); uint8 / uint16 scaled to [0, 1], floats in [0, 1].
- torch tensors: (H, W), (C, H, W) or (N, C, H, W) in [-1, 1].
C may be 1, 3 or 4 (alpha is dropped). Grayscale is repeated to RGB; RGB becomes grayscale with the
ITU-R 601 luma weights (as PIL's "L" mode).
"""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from diffad.data.images import image_to_tensor, open_image
from diffad.errors import ConfigError

_LUMA = (0.299, 0.587, 0.114)
_TOLERANCE = 1e-3


def _numpy_to_unit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise ConfigError(f"numpy images must be uint8, uint16, bool or float in [0, 1]; got {array.dtype}")
    return array.astype(np.float32)


def _channels_last_to_tensors(array: np.ndarray, what: str) -> list[torch.Tensor]:
    """(H, W), (H, W, C) or (N, H, W, C) in [0, 1] to a list of (C, H, W) tensors in [-1, 1]."""
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None]
    elif array.ndim != 4:
        raise ConfigError(f"{what} must have shape (H, W), (H, W, C) or (N, H, W, C); got {array.shape}")
    if array.shape[-1] not in (1, 3, 4):
        raise ConfigError(
            f"{what} has shape {array.shape}: numpy images are channels-last, (H, W, C) or (N, H, W, C) "
            "with C = 1, 3 or 4; stack grayscale images as (N, H, W, 1)"
        )
    _check_finite(array, what)
    if array.min() < -_TOLERANCE or array.max() > 1 + _TOLERANCE:
        raise ConfigError(
            f"{what} must be in [0, 1] (or uint8/uint16); got [{array.min():.3g}, {array.max():.3g}]"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2) * 2 - 1
    return list(tensor)


def _check_finite(values, what: str) -> None:
    finite = torch.isfinite(values).all() if torch.is_tensor(values) else np.isfinite(values).all()
    if not finite:
        raise ConfigError(f"{what} contains NaN or infinite values; pass a finite image")


def _tensor_to_tensors(tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
    tensor = tensor.detach().float().cpu()
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[None]
    elif tensor.ndim != 4:
        raise ConfigError(
            f"{what} must have shape (H, W), (C, H, W) or (N, C, H, W); got {tuple(tensor.shape)}"
        )
    _check_finite(tensor, what)
    if tensor.numel() and (tensor.min() < -1 - _TOLERANCE or tensor.max() > 1 + _TOLERANCE):
        raise ConfigError(
            f"{what} must be in [-1, 1] (as diffad.data.load_image returns); "
            f"got [{tensor.min():.3g}, {tensor.max():.3g}]"
        )
    return list(tensor)


def convert_channels(image: torch.Tensor, channels: int, what: str = "image") -> torch.Tensor:
    """(C, H, W) with C in 1, 3, 4 to `channels` (1 or 3) channels."""
    c = image.shape[0]
    if c == 4:
        image, c = image[:3], 3
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return image.expand(3, -1, -1)
    if c == 3 and channels == 1:
        weights = image.new_tensor(_LUMA).view(3, 1, 1)
        return (image * weights).sum(dim=0, keepdim=True)
    raise ConfigError(f"{what} has {c} channels; the model takes {channels} (give 1, 3 or 4 channels)")


def to_tensor_list(image, channels: int) -> list[torch.Tensor]:
    """Any supported image or list of images to a list of (channels, H, W) float tensors in [-1, 1]."""
    items = image if isinstance(image, list | tuple) else [image]
    if not items:
        raise ConfigError("no images given")
    tensors = []
    for index, item in enumerate(items):
        what = f"image {index}"
        if isinstance(item, str | os.PathLike):
            what, item = f"image {item}", open_image(item)
        if isinstance(item, PIL.Image.Image):
            found = [image_to_tensor(item, channels)]
            _check_finite(found[0], what)  # a float ("F") image can hold NaN
        elif isinstance(item, np.ndarray):
            found = _channels_last_to_tensors(_numpy_to_unit(item), what)
        elif torch.is_tensor(item):
            found = _tensor_to_tensors(item, what)
        else:
            raise ConfigError(f"{what} is a {type(item).__name__}; pass PIL images, numpy arrays or tensors")
        tensors.extend(convert_channels(t, channels, what) for t in found)
    return tensors


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W), antialiased when shrinking; unchanged when already that size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def format_outputs(
    maps: list[torch.Tensor], scores: torch.Tensor, images: list[torch.Tensor], output_type: str
):
    """Maps (H_i, W_i), scores (N,), reconstructions (C, H_i, W_i) in [-1, 1] in the requested type.

    "np": maps (N, H, W) float32, reconstructions (N, H, W, C) in [0, 1], scores (N,) — lists of
    arrays when the images differ in size. "pt": the same as tensors, reconstructions (N, C, H, W).
    "pil": maps as 32-bit float ("F") images, reconstructions as "L"/"RGB" images, scores numpy.
    No reconstructions (an empty list) give None.
    """
    images = [((im + 1) / 2).clamp(0, 1) for im in images]
    same_size = len({tuple(m.shape) for m in maps}) == 1
    if output_type == "pt":
        recon = (torch.stack(images) if same_size else images) if images else None
        return (torch.stack(maps) if same_size else maps), scores, recon
    if output_type == "np":
        maps_np = [m.numpy().astype(np.float32) for m in maps]
        recon_np = [im.permute(1, 2, 0).numpy().astype(np.float32) for im in images]
        recon = (np.stack(recon_np) if same_size else recon_np) if images else None
        return (np.stack(maps_np) if same_size else maps_np), scores.numpy(), recon
    if output_type == "pil":
        maps_pil = [PIL.Image.fromarray(m.numpy().astype(np.float32)) for m in maps]
        recon_pil = []
        for im in images:
            array = (im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            recon_pil.append(PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array))
        return maps_pil, scores.numpy(), recon_pil if images else None
    raise ConfigError(f'output_type must be "np", "pt" or "pil"; got {output_type!r}')


def image_seeds(generator, count: int) -> list[int]:
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
