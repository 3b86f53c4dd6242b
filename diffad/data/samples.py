"""The sample table every reader returns, and the small checks all readers share."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from diffad.errors import DataError

# Suffixes (lower case) of the files a reader treats as images when it lists a folder.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

GOOD = "good"
SPLITS = ("train", "test")


class DataWarning(UserWarning):
    """Something in a dataset that is usable but probably not what the user meant."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: where it is, whether it is defective, and where its mask is."""

    image_path: str
    mask_path: str | None
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" for good images
    split: str  # "train" | "test"
    category: str


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name (empty if the folder is absent)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def find_mask(mask_dir: Path, stem: str) -> Path | None:
    """`<stem>_mask.<ext>` (MVTec AD) or `<stem>.<ext>` (VisA, BTAD, most others) inside `mask_dir`."""
    for name in (f"{stem}_mask", stem):
        for ext in IMAGE_EXTENSIONS:
            for suffix in (ext, ext.upper()):
                candidate = mask_dir / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    return None


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise DataError(f"split must be 'train', 'test' or None, not {split!r}")


def require_dir(path: Path, what: str = "dataset folder") -> Path:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check the path")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a folder")
    return path


def require_file(path: Path, what: str, named_in: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{named_in} names {what} {path}, which does not exist; restore it or fix the index")
    return path


def require_train(samples: Sequence[Sample], category: str, where: Path | str) -> None:
    """A category must have good training images: the whole toolkit learns from them."""
    if not any(s.split == "train" for s in samples if s.category == category):
        raise DataError(
            f"category {category!r} in {where} has no training images; "
            "put good images in its train split (for MVTec AD: <category>/train/good/)"
        )


def warn_missing_masks(samples: Iterable[Sample], where: Path | str) -> None:
    """Defect images without a mask keep label 1 and mask_path None: image-level metrics only."""
    missing = [s.image_path for s in samples if s.label == 1 and s.mask_path is None]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        warnings.warn(
            f"{len(missing)} defect image(s) in {where} have no mask ({shown}); they keep label 1 "
            "and count for image-level metrics only",
            DataWarning,
            stacklevel=3,
        )


def select(samples: Iterable[Sample], split: str | None) -> list[Sample]:
    return [s for s in samples if split is None or s.split == split]


def seeded_holdout(names: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The names (a `fraction` of them, rounded) held out for testing, chosen by a seeded hash.

    A hash of seed and name orders the names, so the choice is the same on every machine and
    Python/NumPy version, and does not depend on the order the files were listed in.
    """
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    return set(ranked[: round(len(ranked) * fraction)])
