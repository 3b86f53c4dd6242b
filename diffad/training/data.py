"""The images a stage trains on (good training images only) and the few it shows in its panels."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffad.errors import DataError
from diffad.training.order import BatchOrder, MicroBatchSampler

# Decode the whole training set once when it fits in this much memory; stream from disk otherwise.
CACHE_LIMIT_BYTES = 2 * 1024**3


def category_list(category: str | None) -> list[str | None]:
    """--category as a list: None (every category), one name, or "a,b,c"."""
    if category is None:
        return [None]
    names = [c.strip() for c in str(category).split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise DataError(f"--category {category!r}: give one name or distinct names separated by commas")
    return names


def load_categories(data: str, category: str | None, split: str | None) -> list:
    """`load_samples` over each category of `category_list(category)`."""
    from diffad.data import load_samples

    return [s for name in category_list(category) for s in load_samples(data, name, split=split)]


def good_training_samples(data: str, category: str | None) -> list:
    samples = [s for s in load_categories(data, category, split="train") if s.label == 0]
    if not samples:
        where = data if category is None else f"{data} (category {category})"
        raise DataError(
            f"no good training images in {where}: the training set is empty. Put good images in the "
            "train split (MVTec AD layout: <category>/train/good/) or point --data at another folder."
        )
    return samples


def validation_samples(data: str, category: str | None, train: list, n: int) -> list:
    """Up to n good training images and up to n defective test images (if the set has a test split)."""
    try:
        defects = [s for s in load_categories(data, category, split="test") if s.label == 1]
    except DataError:
        defects = []
    return list(train[:n]) + defects[:n]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with `n` torch threads. Decoding and resizing one image is too small to share out: on a
    busy machine two threads made it 13x slower (140 ms instead of 11 ms a DAGM image)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CachedImages(Dataset):
    """Every image decoded once, held as one tensor: indexing is then free of disk and PNG work."""

    def __init__(self, dataset: Dataset, desc: str = "decoding images", show: bool = True):
        with torch_threads(1):
            self.images = torch.stack(
                [dataset[i]["image"] for i in tqdm(range(len(dataset)), desc=desc, disable=not show)]
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index]}


def training_images(samples: list, resolution: int, channels: int, *, show_progress: bool = True) -> Dataset:
    """The training images as a Dataset of {"image": (C,H,W) in [-1,1]}, decoded up front if they fit."""
    import warnings

    from diffad.data import AnomalyDataset, DataWarning
    from diffad.data.images import check_images, listed

    odd = check_images([s.image_path for s in samples])  # every broken file named before training
    if odd:
        warnings.warn(
            listed(odd, "image of a size that trains poorly", "images of sizes that train poorly"),
            DataWarning,
            stacklevel=2,
        )
    dataset = AnomalyDataset(samples, resolution, channels=channels)
    if len(dataset) * channels * resolution * resolution * 4 <= CACHE_LIMIT_BYTES:
        return CachedImages(dataset, show=show_progress)
    return dataset


def load_images(samples: list, resolution: int, channels: int) -> torch.Tensor:
    """A few images as one (N,C,H,W) tensor (validation panels)."""
    from diffad.data import AnomalyDataset

    if not samples:
        return torch.empty(0, channels, resolution, resolution)
    dataset = AnomalyDataset(samples, resolution, channels=channels)
    with torch_threads(1):
        return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def micro_batches(dataset: Dataset, order: BatchOrder, first: int, stop: int, workers: int):
    """Iterator over this rank's micro-batches first..stop-1 (dicts of stacked tensors)."""
    if isinstance(dataset, CachedImages):
        return ({"image": dataset.images[order.indices(m)]} for m in range(first, stop))
    loader = DataLoader(dataset, batch_sampler=MicroBatchSampler(order, first, stop), num_workers=workers)
    return iter(loader)
