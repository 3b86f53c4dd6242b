"""Fusing anomaly maps of different detectors (e.g. the diffusion residual and PaDiM).

Maps of different detectors live on different scales (a pixel residual in [0, 2], a Mahalanobis distance
in the tens), so each is first normalised by its own statistics on good images:

    z = (map - mean_good) / std_good

with `mean_good` and `std_good` either one number per map type (`per_pixel=False`: robust to few good
images) or one per pixel (`per_pixel=True`: also removes fixed patterns, such as a detector that is
always high at the border; needs maps of one size). A normalised map reads "standard deviations above
normal". The normalised maps are then summed (evidence adds up; the default) or their maximum is taken
(either detector alone may flag a defect). The image score is the maximum of the fused map.

    stats = fit_fusion({"diffusion": maps_good_a, "padim": maps_good_b})
    fused = fuse_maps({"diffusion": maps_a, "padim": maps_b}, stats, combine="sum")
    scores = fused.reshape(len(fused), -1).max(1)

Fit the statistics on good images the detectors were not trained on (a held-out part of the training
set), since training images score lower than unseen good ones.
"""

from __future__ import annotations

import numpy as np
import torch

from diffad.errors import ConfigError

COMBINE = ("sum", "max")


def _as_array(maps) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ConfigError(f"anomaly maps must be (N, H, W), got shape {maps.shape}")
    return maps


def fit_fusion(
    good_maps: dict, per_pixel: bool = False, eps: float = 1e-8
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per map type, (mean, std) over the maps of good images: scalars, or (H, W) arrays if per_pixel."""
    stats = {}
    for name, maps in good_maps.items():
        maps = _as_array(maps)
        axis = 0 if per_pixel else None
        if per_pixel and len(maps) < 2:
            raise ConfigError(f"per-pixel statistics of {name!r} need at least 2 good maps, got {len(maps)}")
        stats[name] = (maps.mean(axis=axis), np.maximum(maps.std(axis=axis), eps))
    return stats


def normalize_map(maps, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(maps - mean) / std with the statistics of `fit_fusion`."""
    maps = _as_array(maps)
    mean, std = stats
    if np.ndim(mean) == 2 and mean.shape != maps.shape[1:]:
        raise ConfigError(
            f"per-pixel statistics are {mean.shape} but the maps are {maps.shape[1:]}; use one size"
        )
    return (maps - mean) / std


def fuse_maps(maps: dict, stats: dict, combine: str = "sum") -> np.ndarray:
    """The normalised maps of every type in `maps`, summed or maximised pixel by pixel: (N, H, W)."""
    if combine not in COMBINE:
        raise ConfigError(f"combine must be one of {COMBINE}, got {combine!r}")
    missing = set(maps) - set(stats)
    if missing:
        raise ConfigError(f"no good-image statistics for {sorted(missing)}; pass their maps to fit_fusion")
    normalised = np.stack([normalize_map(m, stats[name]) for name, m in maps.items()])
    return normalised.sum(0) if combine == "sum" else normalised.max(0)
