"""Tiny datasets laid out as the official releases are, for tests (`from data_trees import ...`).

Images are seeded noise with a bright square on defect images, and the square is the mask, so
a test can check that masks line up with their defects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _image(
    rng: np.random.Generator, size: int, channels: int, defect: bool
) -> tuple[Image.Image, Image.Image]:
    shape = (size, size) if channels == 1 else (size, size, 3)
    arr = rng.integers(40, 120, size=shape, dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    if defect:
        y, x = rng.integers(0, size // 2, size=2)
        mask[y : y + size // 4, x : x + size // 4] = 255
        arr[mask > 0] = 250
    return Image.fromarray(arr), Image.fromarray(mask)


def make_mvtec_tree(
    root: Path,
    category: str = "widget",
    size: int = 32,
    n_train: int = 6,
    n_good_test: int = 3,
    n_defect: int = 3,
    channels: int = 3,
    seed: int = 0,
    defect_types: tuple[str, ...] = ("scratch",),
) -> Path:
    """`<root>/<category>/{train/good, test/good, test/<type>, ground_truth/<type>/<stem>_mask.png}`.

    `n_defect` images per defect type. Returns the category folder.
    """
    rng = np.random.default_rng(seed)
    cat = Path(root) / category
    for sub, n in (("train/good", n_train), ("test/good", n_good_test)):
        (cat / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _image(rng, size, channels, False)[0].save(cat / sub / f"{i:03d}.png")
    for defect in defect_types:
        (cat / "test" / defect).mkdir(parents=True, exist_ok=True)
        (cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for i in range(n_defect):
            img, mask = _image(rng, size, channels, True)
            img.save(cat / "test" / defect / f"{i:03d}.png")
            mask.save(cat / "ground_truth" / defect / f"{i:03d}_mask.png")
    return cat


def make_visa_tree(
    root: Path,
    category: str = "candle",
    size: int = 32,
    n_train: int = 5,
    n_good_test: int = 2,
    n_defect: int = 2,
    seed: int = 0,
) -> Path:
    """A VisA root: `split_csv/1cls.csv`, `<cat>/Data/Images/{Normal,Anomaly}`, `<cat>/Data/Masks/Anomaly`,
    `<cat>/image_anno.csv`. Images are .JPG as in the release (masks .png, values 0/1). Returns the root.
    Call again with another category to add it to the same CSV.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    data = root / category / "Data"
    for sub in ("Images/Normal", "Images/Anomaly", "Masks/Anomaly"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    rows, anno = [], ["image,label,mask"]
    for i in range(n_train + n_good_test):
        rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
        _image(rng, size, 3, False)[0].save(root / rel, quality=95)
        rows.append(f"{category},{'train' if i < n_train else 'test'},normal,{rel},")
        anno.append(f"{rel},normal,")
    for i in range(n_defect):
        rel, mask_rel = (
            f"{category}/Data/Images/Anomaly/{i:03d}.JPG",
            f"{category}/Data/Masks/Anomaly/{i:03d}.png",
        )
        img, mask = _image(rng, size, 3, True)
        img.save(root / rel, quality=95)
        Image.fromarray((np.asarray(mask) > 0).astype(np.uint8)).save(root / mask_rel)
        rows.append(f"{category},test,anomaly,{rel},{mask_rel}")
        anno.append(f'{rel},"chunk of wax missing,weird wick",{mask_rel}')
    (root / category / "image_anno.csv").write_text("\n".join(anno) + "\n")
    index = root / "split_csv" / "1cls.csv"
    index.parent.mkdir(parents=True, exist_ok=True)
    header = [] if index.exists() else ["object,split,label,image,mask"]
    with index.open("a") as f:
        f.write("\n".join(header + rows) + "\n")
    return root


def make_realiad_tree(
    root: Path,
    category: str = "audiojack",
    size: int = 32,
    resolution: str = "256",
    n_train_objects: int = 2,
    n_good_test_objects: int = 1,
    n_defect_objects: int = 1,
    views: int = 5,
    defect: str = "HS",
    seed: int = 0,
) -> Path:
    """A Real-IAD root: `realiad_jsons/realiad_jsons/<cat>.json` and `realiad_<res>/<cat>/{OK,NG/<code>}/S0001/`,
    five views (C1..C5) per object. Every view of a defect object is defective, with a .png mask
    beside it. Returns the root.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    cat_dir = root / f"realiad_{resolution}" / category
    entries: dict[str, list] = {"train": [], "test": []}
    n_objects = n_train_objects + n_good_test_objects + n_defect_objects
    for obj in range(1, n_objects + 1):
        is_defect = obj > n_train_objects + n_good_test_objects
        part = "train" if obj <= n_train_objects else "test"
        folder = Path("NG", defect) if is_defect else Path("OK")
        (cat_dir / folder / f"S{obj:04d}").mkdir(parents=True, exist_ok=True)
        for view in range(1, views + 1):
            tag = f"NG_{defect}" if is_defect else "OK"
            stem = f"{category}_{obj:04d}_{tag}_C{view}_2023102113{view:04d}"
            rel = folder / f"S{obj:04d}" / f"{stem}.jpg"
            img, mask = _image(rng, size, 3, is_defect)
            img.save(cat_dir / rel, quality=95)
            mask_rel = None
            if is_defect:
                mask_rel = rel.with_suffix(".png")
                mask.save(cat_dir / mask_rel)
            entries[part].append(
                {
                    "category": category,
                    "anomaly_class": defect if is_defect else "OK",
                    "image_path": rel.as_posix(),
                    "mask_path": mask_rel.as_posix() if mask_rel else None,
                }
            )
    index = root / "realiad_jsons" / "realiad_jsons" / f"{category}.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    meta = {"prefix": "", "normal_class": "OK", "pre_transform": None}
    index.write_text(json.dumps({"meta": meta, **entries}, indent=1))
    return root


def make_folder_tree(
    root: Path, size: int = 32, n_good: int = 10, n_defect: int = 2, channels: int = 3, seed: int = 0
) -> tuple[Path, Path, Path]:
    """`<root>/good/*.png`, `<root>/defects/*.png`, `<root>/masks/<stem>_mask.png`: returns the three folders."""
    rng = np.random.default_rng(seed)
    good, defects, masks = (Path(root) / name for name in ("good", "defects", "masks"))
    for folder in (good, defects, masks):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        _image(rng, size, channels, False)[0].save(good / f"g{i:03d}.png")
    for i in range(n_defect):
        img, mask = _image(rng, size, channels, True)
        img.save(defects / f"d{i:03d}.png")
        mask.save(masks / f"d{i:03d}_mask.png")
    return good, defects, masks
