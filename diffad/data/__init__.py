"""Datasets as sample tables (MVTec AD, VisA, Real-IAD, plain folders, ELPV), and image loading."""

from diffad.data.detect import FORMATS, detect_format, list_categories, load_samples
from diffad.data.samples import DataWarning, Sample

# These import torch; loaded on first use so `diffad --help` (which imports diffad.data.cli) stays quick.
_LAZY = {
    "AnomalyDataset": "diffad.data.dataset",
    "load_image": "diffad.data.images",
    "load_mask": "diffad.data.images",
    "load_pair": "diffad.data.images",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffad.data' has no attribute {name!r}")


__all__ = ["FORMATS", "DataWarning", "Sample", "detect_format", "list_categories", "load_samples", *_LAZY]
