"""Synthetic defect generators: masks, texture paste, cut-paste, drawn defects, diffusion inpainting.

Every generator takes an image tensor (C, H, W) or a batch (N, C, H, W) in [-1, 1] and a
torch.Generator (or a seed), and returns `SyntheticDefect(image, mask)`: a tuple of the defective image
and its 0/1 float mask (1, H, W), with the drawn parameters in `.params`. Pixels outside the mask
are exactly the input's, and the mask is never empty.
"""

# Everything here imports torch: loaded on first use, so `diffad --help` (which imports
# diffad.synthesis.cli) stays quick.
_LAZY = {
    "SyntheticDefect": "diffad.synthesis.common",
    "cutpaste": "diffad.synthesis.cut_paste",
    "cutpaste_scar": "diffad.synthesis.cut_paste",
    "ADDING_FILLS": "diffad.synthesis.draem",
    "FILLS": "diffad.synthesis.draem",
    "REMOVING_FILLS": "diffad.synthesis.draem",
    "draem_anomaly": "diffad.synthesis.draem",
    "crack": "diffad.synthesis.drawn",
    "scratch": "diffad.synthesis.drawn",
    "spots": "diffad.synthesis.drawn",
    "estimate_foreground": "diffad.synthesis.foreground",
    "diffusion_inpaint": "diffad.synthesis.inpaint",
    "noise_mask": "diffad.synthesis.masks",
    "METHOD_CHOICES": "diffad.synthesis.methods",
    "METHODS": "diffad.synthesis.methods",
    "synthesize": "diffad.synthesis.methods",
    "fractal_noise": "diffad.synthesis.perlin",
    "perlin_noise": "diffad.synthesis.perlin",
    "TextureBank": "diffad.synthesis.textures",
    "Settings": "diffad.synthesis.dataset_writer",
    "synthesize_dataset": "diffad.synthesis.dataset_writer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffad.synthesis' has no attribute {name!r}")


__all__ = sorted(_LAZY)
