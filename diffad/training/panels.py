"""The PNG a training run writes every --validation_steps: rows of images side by side."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

LABEL_WIDTH = 96
GAP = 2
MIN_SIDE = 96  # tiny test images are enlarged (nearest neighbour) so a panel stays readable


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(N,C,H,W) in `value_range` -> (N,H,W,3) uint8; one channel is repeated to grey RGB."""
    lo, hi = value_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return (x[:, :3].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def save_panel(rows: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write rows of equal-sized uint8 images (N,H,W,3), each row labelled, as one PNG (atomically)."""
    named = [(name, imgs) for name, imgs in rows.items() if len(imgs)]
    n = max(len(imgs) for _, imgs in named)
    h, w = named[0][1].shape[1:3]
    zoom = max(1, -(-MIN_SIDE // max(h, w)))
    h, w = h * zoom, w * zoom
    canvas = Image.new("RGB", (LABEL_WIDTH + n * (w + GAP), len(named) * (h + GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, imgs) in enumerate(named):
        y = r * (h + GAP)
        draw.text((4, y + h // 2 - 6), name, fill="black")
        for c, img in enumerate(imgs):
            tile = Image.fromarray(img).resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(tile, (LABEL_WIDTH + c * (w + GAP), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def error_rows(inputs: torch.Tensor, outputs: torch.Tensor) -> dict[str, np.ndarray]:
    """Input, reconstruction and their absolute difference (brighter = larger), ready for save_panel."""
    diff = (inputs.float() - outputs.float()).abs().mean(1, keepdim=True)
    return {
        "input": to_uint8(inputs),
        "reconstruction": to_uint8(outputs),
        "|difference|": to_uint8(diff / diff.amax().clamp_min(1e-6), (0.0, 1.0)),
    }
