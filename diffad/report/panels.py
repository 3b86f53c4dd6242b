"""Images for people: anomaly maps in colour, maps over images, and labelled panels of tiles.

Used by the report, `diffad detect` and the training scripts' validation images. Every function
takes what the rest of diffad hands around:
- torch tensors (C, H, W) or (H, W), by default in [-1, 1] (the datasets' convention);
- numpy arrays (H, W) or (H, W, C): uint8 as is, uint16 scaled, floats by default in [0, 1]
  (the pipelines' "np" output, as in Diffusers);
- PIL images.
`value_range` overrides the float range. One channel is shown grey; a fourth (alpha) is dropped.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffad.errors import ConfigError
from diffad.files import atomic_write

TITLE_HEIGHT = 18
GAP = 4


def to_rgb8(image: Any, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 from a tensor, numpy array or PIL image (see the module's conventions)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    elif hasattr(image, "detach"):  # torch.Tensor: channels first, [-1, 1] unless told
        array = image.detach().float().cpu().numpy()
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)
        image, value_range = array, value_range or (-1.0, 1.0)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        raise ConfigError(f"numpy images are (H, W) or (H, W, C); got {array.shape} (channels first?)")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ConfigError(f"an image must be (H, W) or (H, W, C); got shape {array.shape}")
    array = array[:, :, :3]
    if array.dtype == np.uint8 and value_range is None:
        unit = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16 and value_range is None:
        unit = array.astype(np.float32) / 65535.0
    else:
        lo, hi = value_range or (0.0, 1.0)
        unit = (array.astype(np.float32) - lo) / (hi - lo)
    unit = np.nan_to_num(np.clip(unit, 0.0, 1.0))
    rgb = (unit * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb


def _plane(anomaly_map: Any) -> np.ndarray:
    array = (
        anomaly_map.detach().float().cpu().numpy()
        if hasattr(anomaly_map, "detach")
        else np.asarray(anomaly_map)
    )
    array = array.astype(np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ConfigError(f"an anomaly map must be (H, W) or (1, H, W); got shape {np.shape(anomaly_map)}")
    return array


def colorize(
    anomaly_map: Any, vmin: float | None = None, vmax: float | None = None, cmap: str = "jet"
) -> np.ndarray:
    """(H, W, 3) uint8: the map through a matplotlib colour map, `vmin`..`vmax` (default: the map's
    own range) spanning it. Pass one range for many maps so that their colours compare."""
    from matplotlib import colormaps

    values = _plane(anomaly_map)
    lo = float(np.nanmin(values)) if vmin is None else float(vmin)
    hi = float(np.nanmax(values)) if vmax is None else float(vmax)
    unit = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    return (colormaps[cmap](np.nan_to_num(unit))[:, :, :3] * 255.0 + 0.5).astype(np.uint8)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """`rgb` at (height, width)."""
    if rgb.shape[:2] == tuple(size):
        return rgb
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), method))


def overlay(
    image: Any,
    anomaly_map: Any,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8: the coloured map blended over the image (`alpha` = the map's weight); the
    map is resized to the image when their sizes differ."""
    base = to_rgb8(image, value_range)
    heat = resize_rgb(colorize(anomaly_map, vmin, vmax, cmap), base.shape[:2])
    return (base.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha + 0.5).astype(np.uint8)


def mask_to_rgb8(mask: Any) -> np.ndarray:
    """A 0/1 (or 0/255) mask as white defects on black."""
    values = _plane(mask)
    white = values > (0.5 if values.max(initial=0) <= 1 else 127)
    return np.repeat((white * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def make_panel(
    rows: Sequence[Sequence[Any]] | Sequence[Any],
    column_titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    tile_size: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8: a grid of tiles, a title above each column and a label left of each row.

    `rows` is a list of rows of images (or one flat list: a single row). Tiles are scaled to
    `tile_size` pixels high (default: the first tile's height, at least 96 so tiny images stay
    readable; small images are enlarged without smoothing)."""
    if len(rows) and not isinstance(rows[0], list | tuple):
        rows = [rows]
    tiles = [[to_rgb8(image, value_range) for image in row] for row in rows]
    if not tiles or not any(tiles):
        raise ConfigError("a panel needs at least one image")
    first = next(t for row in tiles for t in row)
    height = int(tile_size or max(first.shape[0], 96))
    scaled = [
        [
            resize_rgb(t, (height, round(t.shape[1] * height / t.shape[0])), nearest=t.shape[0] < height)
            for t in row
        ]
        for row in tiles
    ]
    columns = max(len(row) for row in scaled)
    widths = [
        max((row[c].shape[1] for row in scaled if c < len(row)), default=height) for c in range(columns)
    ]
    font = _font()
    label_width = 0
    if row_labels:
        label_width = max(int(font.getlength(label)) for label in row_labels) + 2 * GAP
    top = TITLE_HEIGHT if column_titles else 0
    canvas = Image.new(
        "RGB",
        (label_width + sum(widths) + GAP * (columns - 1), top + len(scaled) * (height + GAP) - GAP),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    xs = np.cumsum([label_width, *[w + GAP for w in widths]])[:-1]
    for c, title in enumerate(column_titles or []):
        if c < columns:
            draw.text((int(xs[c]) + 2, 2), title, fill="black", font=font)
    for r, row in enumerate(scaled):
        y = top + r * (height + GAP)
        if row_labels and r < len(row_labels):
            draw.text((GAP, y + height // 2 - 6), row_labels[r], fill="black", font=font)
        for c, tile in enumerate(row):
            canvas.paste(Image.fromarray(tile), (int(xs[c]), y))
    return np.asarray(canvas)


def png_bytes(image: np.ndarray) -> bytes:
    """The PNG encoding of an (H, W, 3) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def save_panel(
    path: str | os.PathLike,
    rows: Sequence[Sequence[Any]] | Sequence[Any],
    column_titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    tile_size: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """`make_panel` written as a PNG, atomically (parent folders made). Returns the path."""
    panel = make_panel(rows, column_titles, row_labels, tile_size, value_range)
    return atomic_write(path, png_bytes(panel))
