"""A plain folder of good images, optionally with a folder of defect images and one of masks.

    good/       *.png ...              good images (the category is the folder's name)
    defects/    *.png  or <type>/*.png defect images; a subfolder's name is the defect type
    masks/      <stem>[_mask].png      or <type>/<stem>[_mask].png, mirroring defects/

Without defects every good image trains. With defects, a seeded fifth of the good images
(chosen by `seeded_holdout`, so the same on every machine) is kept for testing beside them.
"""

from __future__ import annotations

from pathlib import Path

from diffad.data.samples import (
    GOOD,
    Sample,
    check_split,
    find_mask,
    list_images,
    require_dir,
    seeded_holdout,
    select,
    warn_missing_masks,
)
from diffad.errors import DataError

TEST_FRACTION = 0.2
SEED = 0


def _defect_images(defects: Path) -> list[tuple[Path, str]]:
    found = [(p, "defect") for p in list_images(defects)]
    for sub in sorted(p for p in defects.iterdir() if p.is_dir()):
        found += [(p, sub.name) for p in list_images(sub)]
    return found


def load_folder(
    path: str | Path,
    category: str | None = None,
    split: str | None = None,
    *,
    defects: str | Path | None = None,
    masks: str | Path | None = None,
) -> list[Sample]:
    """Samples from a folder of good images (train) and, optionally, defect images and masks (test)."""
    check_split(split)
    folder = require_dir(Path(path).absolute())
    category = category or folder.name
    good = list_images(folder)
    if not good:
        raise DataError(
            f"{folder} has no images to train on ({', '.join(('.png', '.jpg', '.bmp', '.tif'))} ...); "
            "point at a folder of good images"
        )
    if masks is not None and defects is None:
        raise DataError("--masks needs --defects: masks belong to defect images")
    if defects is None:
        return select([Sample(str(p), None, 0, GOOD, "train", category) for p in good], split)
    defect_dir = require_dir(Path(defects).absolute(), "defect folder")
    mask_dir = require_dir(Path(masks).absolute(), "mask folder") if masks is not None else None
    found = _defect_images(defect_dir)
    if not found:
        raise DataError(f"defect folder {defect_dir} has no images")
    held_out = seeded_holdout([p.name for p in good], TEST_FRACTION, SEED)
    samples = [
        Sample(str(p), None, 0, GOOD, "test" if p.name in held_out else "train", category) for p in good
    ]
    for image, defect in found:
        mask = None
        if mask_dir is not None:
            mask = (find_mask(mask_dir / defect, image.stem) if defect != "defect" else None) or find_mask(
                mask_dir, image.stem
            )
        samples.append(Sample(str(image), str(mask) if mask else None, 1, defect, "test", category))
    if mask_dir is not None:  # without a mask folder, image-level labels are all the user offered
        warn_missing_masks(select(samples, split), defect_dir)
    return select(samples, split)
