"""Reading images and masks into tensors, with errors that name the file.

Any mode Pillow decodes is accepted: L, RGB, RGBA/LA (alpha dropped), P (palette colours),
1, CMYK, YCbCr, and high bit depth (I;16, I as 16-bit, F as 0..1). Images become (C,H,W) float
tensors in [-1, 1]; masks become (1,H,W) tensors of 0/1 where any non-zero pixel is defective
(MVTec masks hold 255, VisA masks small class numbers; palette masks are read by index).
EXIF orientation is ignored on purpose: masks carry none, and must stay aligned with their image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from diffad.errors import DataError

Size = int | tuple[int, int] | None

_HIGH_DEPTH_MAX = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open and fully decode `path`, turning every way it can fail into a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here and not later
            return img.copy()
    except UnidentifiedImageError as err:
        raise DataError(f"{what} {path} is not an image Pillow can read; remove or replace it") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{what} {path} is truncated or corrupt ({err}); replace it") from err


# Below this side, or beyond this ratio of the sides, an image resized to a square working size loses
# what it shows: a 1x1 image becomes one flat colour, a 2000x10 strip is squashed 200 times.
MIN_SIDE = 8
MAX_ASPECT = 8.0
SHOWN = 5  # files a message names before it gives the count of the rest


def size_warning(path: str | Path, width: int, height: int) -> str | None:
    """Why an image of this size will detect poorly once resized to a square, or None."""
    if min(width, height) < MIN_SIDE:
        return f"image {path} is {width}x{height}, under {MIN_SIDE} px on a side: too small to show a defect"
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return (
            f"image {path} is {width}x{height}: resized to a square working size it is squashed "
            f"{max(width, height) / min(width, height):.0f} times; crop it into squarer tiles"
        )
    return None


def listed(messages: list[str], one: str, many: str) -> str:
    """The count, what they are (`one` or `many`), the first few `messages` and how many more, in one line."""
    shown = "; ".join(messages[:SHOWN])
    more = f"; and {len(messages) - SHOWN} more" if len(messages) > SHOWN else ""
    return f"{len(messages)} {one if len(messages) == 1 else many}: {shown}{more}"


def check_images(paths: list[str | Path]) -> list[str]:
    """Reads every image's header and checks its structure (cheap, no decoding): raises one DataError
    that names every broken file (the first few and the count), and returns a warning per image whose
    size will detect poorly (see `size_warning`)."""
    broken, warnings = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                width, height = img.size
                img.verify()
        except FileNotFoundError:
            broken.append(f"{path} does not exist")
            continue
        except UnidentifiedImageError:
            broken.append(f"{path} is not an image Pillow can read")
            continue
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            broken.append(f"{path} is truncated or corrupt ({err})")
            continue
        warning = size_warning(path, width, height)
        if warning:
            warnings.append(warning)
    if broken:
        raise DataError(
            listed(broken, "image cannot be read", "images cannot be read") + "; replace or remove them"
        )
    return warnings


def mask_is_empty(path: str | Path) -> bool:
    """Whether a mask has no defective pixel (the rule of `mask_to_tensor`: any non-zero value)."""
    arr = np.asarray(open_image(path, what="mask"))
    return not bool((arr[..., :3] if arr.ndim == 3 else arr).any())


def check_finite(tensor: torch.Tensor, path: str | Path) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise DataError(f"image {path} holds NaN or infinite pixel values; replace it with a finite image")
    return tensor


def _target_size(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _to_unit_array(img: Image.Image, channels: int) -> np.ndarray:
    """(H, W, channels) float32 in [0, 1]."""
    if img.mode in _HIGH_DEPTH_MAX:
        arr = np.asarray(img, dtype=np.float32) / _HIGH_DEPTH_MAX[img.mode]
        arr = np.clip(arr, 0.0, 1.0)[..., None]
        return np.repeat(arr, channels, axis=-1)
    if img.mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[..., None]
        return np.repeat(arr, channels, axis=-1)
    if img.mode == "P":  # palette colours; transparency goes through RGBA so Pillow does not warn
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if channels == 1:
        arr = np.asarray(img.convert("L"), dtype=np.float32)[..., None]
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return arr / 255.0


def image_to_tensor(img: Image.Image, channels: int = 3, size: Size = None) -> torch.Tensor:
    """A decoded PIL image as a (channels, H, W) tensor in [-1, 1], resized bicubic with antialiasing."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, not {channels}")
    tensor = torch.from_numpy(np.ascontiguousarray(_to_unit_array(img, channels))).permute(2, 0, 1)
    target = _target_size(size)
    if target is not None and target != tuple(tensor.shape[-2:]):
        tensor = F.interpolate(
            tensor[None], size=target, mode="bicubic", antialias=True, align_corners=False
        )[0]
        tensor = tensor.clamp(0.0, 1.0)  # bicubic overshoots at edges
    return tensor * 2.0 - 1.0


def mask_to_tensor(img: Image.Image, size: Size = None) -> torch.Tensor:
    """A decoded mask as a (1, H, W) float tensor of 0/1, resized with nearest neighbour."""
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)  # any coloured pixel marks a defect; alpha ignored
    tensor = torch.from_numpy((arr > 0).astype(np.float32))[None]
    target = _target_size(size)
    if target is not None and target != tuple(tensor.shape[-2:]):
        tensor = F.interpolate(tensor[None], size=target, mode="nearest-exact")[0]
    return tensor


def load_image(path: str | Path, channels: int = 3, size: Size = None) -> torch.Tensor:
    """Read any Pillow image as a (channels, H, W) float tensor in [-1, 1].

    `size` is None (keep the file's size), an int (square) or (height, width).
    """
    return check_finite(image_to_tensor(open_image(path), channels, size), path)


def load_mask(path: str | Path, size: Size = None) -> torch.Tensor:
    """Read a defect mask as a (1, H, W) tensor of 0/1 (non-zero pixels are defective)."""
    return mask_to_tensor(open_image(path, what="mask"), size)


def load_pair(
    image_path: str | Path, mask_path: str | Path | None, channels: int = 3, size: Size = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image and its mask (zeros when there is none), after checking they have the same size."""
    img = open_image(image_path)
    if mask_path is None:
        h, w = _target_size(size) or (img.height, img.width)
        return check_finite(image_to_tensor(img, channels, size), image_path), torch.zeros(1, h, w)
    mask = open_image(mask_path, what="mask")
    if mask.size != img.size:
        raise DataError(
            f"mask {mask_path} is {mask.width}x{mask.height} but its image {image_path} is "
            f"{img.width}x{img.height}; masks must match their image pixel for pixel"
        )
    return check_finite(image_to_tensor(img, channels, size), image_path), mask_to_tensor(mask, size)
