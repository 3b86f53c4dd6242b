"""A torch Dataset over a sample table: images in [-1, 1], masks of 0/1, at one resolution."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from diffad.data.images import Size, load_pair
from diffad.data.samples import Sample
from diffad.errors import DataError


class AnomalyDataset(Dataset):
    """Yields {"image": (C,H,W) in [-1,1], "mask": (1,H,W) 0/1, "label": int, "path": str, "has_mask": bool}.

    Every image is resized to `resolution` (int for square, or (height, width)); None keeps
    each file's own size, which only batches when all sizes agree. Good images and defect
    images without a mask get an all-zero mask and has_mask False. A mask whose size differs
    from its image raises DataError naming both files.
    """

    def __init__(self, samples: Sequence[Sample], resolution: Size, channels: int = 3):
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, not {channels}")
        if not samples:
            raise DataError("the dataset is empty: no samples were found for this category and split")
        self.samples = list(samples)
        self.resolution = resolution
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, mask = load_pair(sample.image_path, sample.mask_path, self.channels, self.resolution)
        return {
            "image": image,
            "mask": mask,
            "label": int(sample.label),
            "path": sample.image_path,
            "has_mask": sample.mask_path is not None,
        }
