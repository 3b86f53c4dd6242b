"""VisA layout, as in VisA_20220922.tar.

    <root>/split_csv/1cls.csv            object,split,label,image,mask (the one-class protocol)
    <root>/<object>/Data/Images/Normal/0000.JPG
    <root>/<object>/Data/Images/Anomaly/000.JPG
    <root>/<object>/Data/Masks/Anomaly/000.png
    <root>/<object>/image_anno.csv       image,label,mask (defect names, used when present)

Paths in the CSVs are relative to the root. Labels are "normal" / "anomaly".
"""

from __future__ import annotations

import csv
from pathlib import Path

from diffad.data.samples import (
    GOOD,
    Sample,
    check_split,
    require_dir,
    require_file,
    require_train,
    select,
    warn_missing_masks,
)
from diffad.errors import DataError

SPLIT_CSV = Path("split_csv") / "1cls.csv"
_COLUMNS = ("object", "split", "label", "image", "mask")


def is_root(path: Path) -> bool:
    return (path / SPLIT_CSV).is_file()


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path} lacks the column(s) {missing}; expected {list(columns)}")
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def _defect_names(root: Path, category: str) -> dict[str, str]:
    """image path -> defect name from `<object>/image_anno.csv` (empty when the file is absent)."""
    anno = root / category / "image_anno.csv"
    if not anno.is_file():
        return {}
    rows = _read_csv(anno, ("image", "label"))
    # Names hold commas and spaces ("chunk of wax missing", "bent,melt"): make them folder-safe.
    return {r["image"]: r["label"].replace(",", "+").replace(" ", "_") for r in rows if r["label"]}


def list_categories(root: str | Path) -> list[str]:
    root = require_dir(Path(root).absolute())
    return sorted({row["object"] for row in _read_csv(root / SPLIT_CSV, _COLUMNS)})


def load_visa(path: str | Path, category: str | None = None, split: str | None = None) -> list[Sample]:
    """Samples of one VisA object (or of all when `category` is None) from `split_csv/1cls.csv`."""
    check_split(split)
    root = require_dir(Path(path).absolute())
    index = root / SPLIT_CSV
    if not index.is_file():
        raise DataError(f"{root} is not a VisA root: {index} does not exist")
    rows = _read_csv(index, _COLUMNS)
    categories = sorted({r["object"] for r in rows})
    if category is not None and category not in categories:
        raise DataError(f"no VisA object {category!r} in {index}; objects found: {categories}")
    wanted = categories if category is None else [category]
    samples: list[Sample] = []
    for name in wanted:
        names = _defect_names(root, name)
        for row in rows:
            if row["object"] != name:
                continue
            if row["split"] not in ("train", "test") or row["label"] not in ("normal", "anomaly"):
                raise DataError(
                    f"{index}: row for {row['image']} has split {row['split']!r} and label "
                    f"{row['label']!r}; expected train/test and normal/anomaly"
                )
            image = require_file(root / row["image"], "the image", index)
            if row["label"] == "normal":
                samples.append(Sample(str(image), None, 0, GOOD, row["split"], name))
                continue
            mask = require_file(root / row["mask"], "the mask", index) if row["mask"] else None
            defect = names.get(row["image"], "anomaly")
            samples.append(Sample(str(image), str(mask) if mask else None, 1, defect, row["split"], name))
        if split != "test":
            require_train(samples, name, index)
    samples.sort(key=lambda s: (s.category, s.split != "train", s.label, s.defect_type, s.image_path))
    warn_missing_masks(select(samples, split), index)
    return select(samples, split)
