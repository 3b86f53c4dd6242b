"""A folder of texture images (DTD, say, or any pictures) to fill DRAEM-style defects with."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from diffad.data.images import load_image
from diffad.data.samples import is_image_file
from diffad.errors import DataError


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted so that every machine sees the same order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give a folder of images")
    files = sorted(p for p in folder.rglob("*") if is_image_file(p))
    if not files:
        raise DataError(f"no images in {folder} (or its subfolders): give a folder of images")
    return files


class TextureBank:
    """The images of a folder, read on demand and kept in a small cache."""

    def __init__(self, folder: str | Path, cache_size: int = 32):
        self.folder = Path(folder)
        self.files = list_images(self.folder)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files)

    def get(self, index: int, channels: int) -> torch.Tensor:
        key = (index, channels)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        image = load_image(self.files[index], channels)
        self._cache[key] = image
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return image

    def name(self, index: int) -> str:
        return self.files[index].relative_to(self.folder).as_posix()
