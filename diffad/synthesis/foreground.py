"""Where the object is: Otsu's threshold on the smoothed grey image, cleaned up with morphology.

RealNet keeps synthetic defects on the object with a per-class foreground mask made this way. The
side of the threshold whose pixels lie nearer the image centre is the object (a screw on a plain
background, or a solar cell whose dark surround shows only in the corners). Images with no object
(textures) come back as all foreground: when both sides are spread alike over the image, or the
estimate covers almost everything or almost nothing.
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
    centrality: float = 0.05,
    min_piece: float = 0.9,
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
    if bright.all() or not bright.any():
        return everything
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot((yy + 0.5) / h - 0.5, (xx + 0.5) / w - 0.5)
    bright_r, dark_r = radius[bright].mean(), radius[~bright].mean()
    if abs(bright_r - dark_r) < centrality:
        return everything  # both sides spread alike: a texture, no single object stands out
    fg = bright if bright_r < dark_r else ~bright
    r = max(1, round(0.01 * min(h, w)))
    fg = ndimage.binary_opening(fg, structure=morphology.disk(r))
    fg = ndimage.binary_closing(fg, structure=morphology.disk(2 * r), border_value=0)
    fg = ndimage.binary_fill_holes(fg)
    labels, count = ndimage.label(fg)
    if count == 0:
        return everything
    sizes = np.bincount(labels.ravel())[1:]
    # An object is one piece; a texture split by a threshold falls into many.
    if sizes.max() < min_piece * sizes.sum():
        return everything
    fg = labels == (1 + sizes.argmax())
    if not (min_fraction <= fg.mean() <= max_fraction):
        return everything
    return torch.from_numpy(fg)[None].to(image.device)
