"""Where the object is: Otsu's threshold on the smoothed grey image, cleaned up with morphology.

RealNet keeps synthetic defects on the object with a per-class foreground mask made this way. The
side of the threshold that touches the image border less is the object. Images with no object
(textures, a cell that fills the frame) come back as all foreground: when the estimate covers
almost everything, or almost nothing, or the two sides touch the border equally.
"""

from __future__ import annotations

import numpy as np
import torch


def estimate_foreground(
    image: torch.Tensor,
    *,
    smoothing: float = 0.02,
    min_fraction: float = 0.05,
    max_fraction: float = 0.95,
) -> torch.Tensor:
    """A bool mask (1, H, W) of the object in `image` (C, H, W) in [-1, 1]."""
    from scipy import ndimage  # scikit-image and scipy load slowly: only when a foreground is asked for
    from skimage import filters, morphology

    h, w = image.shape[-2:]
    grey = image.float().mean(0).cpu().numpy()
    grey = ndimage.gaussian_filter(grey, sigma=max(1.0, smoothing * min(h, w)))
    everything = torch.ones((1, h, w), dtype=torch.bool, device=image.device)
    if float(grey.max() - grey.min()) < 1e-6:
        return everything
    bright = grey > filters.threshold_otsu(grey)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    bright_on_border = border.mean()
    if abs(bright_on_border - 0.5) < 0.25:
        return everything  # both sides reach the border alike: no single object stands out
    fg = bright if bright_on_border < 0.5 else ~bright
    radius = max(1, round(0.01 * min(h, w)))
    fg = morphology.binary_opening(fg, morphology.disk(radius))
    fg = morphology.binary_closing(fg, morphology.disk(2 * radius))
    fg = ndimage.binary_fill_holes(fg)
    fraction = fg.mean()
    if not (min_fraction <= fraction <= max_fraction):
        return everything
    return torch.from_numpy(fg)[None].to(image.device)
