"""MVTec AD layout: `<cat>/train/good`, `<cat>/test/<defect>`, `<cat>/ground_truth/<defect>/<stem>_mask.png`.

Many other sets ship in this layout too (BTAD, MPDD, DAGM as docs/DATASETS.md lays it out), so
masks named `<stem>.png` are accepted as well as MVTec's `<stem>_mask.png`.
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
    require_train,
    select,
    warn_missing_masks,
)
from diffad.errors import DataError


def is_category(path: Path) -> bool:
    """A folder that looks like one MVTec AD category."""
    return (path / "train").is_dir() or ((path / "test").is_dir() and (path / "ground_truth").is_dir())


def list_categories(root: str | Path) -> list[str]:
    """The category folders under an MVTec AD root, sorted."""
    root = require_dir(Path(root).absolute())
    return sorted(p.name for p in root.iterdir() if p.is_dir() and is_category(p))


def category_folder(path: str | Path, category: str | None) -> Path:
    """Resolve (category folder) or (root, category name) to the category folder."""
    path = require_dir(Path(path).absolute())
    if is_category(path):
        if category is not None and category != path.name and not is_category(path / category):
            raise DataError(f"{path} is the MVTec AD category {path.name!r}, not {category!r}")
        return path / category if category not in (None, path.name) else path
    if category is None:
        raise DataError(f"{path} holds several categories; pick one of {list_categories(path)}")
    folder = path / category
    if not is_category(folder):
        raise DataError(
            f"no MVTec AD category {category!r} in {path} (expected {folder}/train/good); "
            f"categories found: {list_categories(path)}"
        )
    return folder


def load_category(folder: Path, split: str | None = None) -> list[Sample]:
    """All samples of one MVTec AD category folder."""
    category = folder.name
    samples = [Sample(str(p), None, 0, GOOD, "train", category) for p in list_images(folder / "train" / GOOD)]
    test = folder / "test"
    defect_types = sorted(p.name for p in test.iterdir() if p.is_dir()) if test.is_dir() else []
    for defect in defect_types:
        mask_dir = folder / "ground_truth" / defect
        for image in list_images(test / defect):
            if defect == GOOD:
                samples.append(Sample(str(image), None, 0, GOOD, "test", category))
                continue
            mask = find_mask(mask_dir, image.stem)
            samples.append(Sample(str(image), str(mask) if mask else None, 1, defect, "test", category))
    if split != "test":
        require_train(samples, category, folder)
    warn_missing_masks(select(samples, split), folder)
    return select(samples, split)


def load_mvtec(path: str | Path, category: str | None = None, split: str | None = None) -> list[Sample]:
    """Samples of one category (a category folder, or a root and a name) or of every category of a root."""
    check_split(split)
    path = require_dir(Path(path).absolute())
    if category is None and not is_category(path):
        categories = list_categories(path)
        if not categories:
            raise DataError(f"{path} has no MVTec AD category folders (<category>/train/good)")
        return [s for name in categories for s in load_category(path / name, split)]
    return load_category(category_folder(path, category), split)
