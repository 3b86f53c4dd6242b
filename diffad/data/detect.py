"""Which layout a folder is in, and `load_samples`, the one entry point every command uses."""

from __future__ import annotations

from pathlib import Path

from diffad.data import elpv, folder, mvtec, realiad, visa
from diffad.data.samples import Sample, list_images, require_dir
from diffad.errors import DataError

FORMATS = {
    "elpv": "ELPV solar cells (elpv-dataset package)",
    "visa": "VisA layout",
    "realiad": "Real-IAD layout",
    "mvtec": "MVTec AD layout",
    "folder": "plain folder of images",
}


def detect_format(path: str | Path) -> str:
    """One of FORMATS' keys. The string "elpv" names the ELPV package (use ./elpv for a folder)."""
    if str(path) == elpv.NAME:
        return "elpv"
    path = require_dir(Path(path).absolute())
    if visa.is_root(path):
        return "visa"
    if realiad.is_root(path):
        return "realiad"
    if mvtec.is_category(path) or any(p.is_dir() and mvtec.is_category(p) for p in path.iterdir()):
        return "mvtec"
    if list_images(path):
        return "folder"
    raise DataError(
        f"cannot tell the layout of {path}: expected an MVTec AD category or root (train/good/), "
        "a VisA root (split_csv/1cls.csv), a Real-IAD root (realiad_jsons/), or a folder of images"
    )


def list_categories(path: str | Path) -> list[str]:
    """The categories `load_samples(path, category=...)` accepts."""
    kind = detect_format(path)
    if kind == "elpv":
        return list(elpv.CATEGORIES)
    if kind == "folder":
        return [Path(path).absolute().name]
    if kind == "mvtec" and mvtec.is_category(Path(path).absolute()):
        return [Path(path).absolute().name]
    return {"visa": visa.list_categories, "realiad": realiad.list_categories, "mvtec": mvtec.list_categories}[
        kind
    ](path)


def load_samples(
    path: str | Path,
    category: str | None = None,
    split: str | None = None,
    *,
    defects: str | Path | None = None,
    masks: str | Path | None = None,
) -> list[Sample]:
    """The sample table of a dataset folder, its layout detected (see `detect_format`).

    `category` picks one category of a multi-category root (all of them when None); `split`
    picks "train" or "test" (both when None). `defects` and `masks` are for a plain folder of
    good images only. Defect images without a mask keep label 1 and mask_path None, with a
    DataWarning; everything else wrong (missing folder or file, no train images, index naming
    missing files) raises DataError naming the file.
    """
    kind = detect_format(path)
    if (defects is not None or masks is not None) and kind != "folder":
        raise DataError(f"--defects/--masks are for a plain folder of good images; {path} is {FORMATS[kind]}")
    if kind == "elpv":
        return elpv.load_elpv(category, split)
    if kind == "visa":
        return visa.load_visa(path, category, split)
    if kind == "realiad":
        return realiad.load_realiad(path, category, split)
    if kind == "mvtec":
        return mvtec.load_mvtec(path, category, split)
    return folder.load_folder(path, category, split, defects=defects, masks=masks)
