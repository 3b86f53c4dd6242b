"""Real-IAD layout (CVPR 2024), as released on the Hugging Face hub.

    Real-IAD/
      realiad_jsons/realiad_jsons/<category>.json     the official multi-view train/test split
      realiad_256/<category>/OK/S0001/<category>_0001_OK_C1_<time>.jpg       (also 512, 1024, raw)
      realiad_256/<category>/NG/<code>/S0003/<category>_0003_NG_<code>_C1_<time>.jpg  (+ .png mask)

Each JSON holds {"meta": {"normal_class": "OK", ...}, "train": [...], "test": [...]}; an entry is
{"category", "anomaly_class", "image_path", "mask_path"} with paths relative to the category's
image folder. Every object is photographed from five views (C1..C5): each view is one sample.
The defect type is the release's two-letter code (AK pit, BX deformation, CH abrasion, HS scratch,
PS damage, QS missing parts, YW foreign objects, ZW contamination).

Pass the Real-IAD root (the first resolution found of 256, 512, 1024, raw is read) or one
`realiad_<res>` folder inside it to choose the resolution.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffad.data.samples import (
    GOOD,
    Sample,
    check_split,
    require_dir,
    require_train,
    select,
    warn_missing_masks,
)
from diffad.errors import DataError

JSON_DIRS = (Path("realiad_jsons") / "realiad_jsons", Path("realiad_jsons"))
RESOLUTIONS = ("256", "512", "1024", "raw")


def _json_dir(root: Path) -> Path | None:
    for rel in JSON_DIRS:
        if any((root / rel).glob("*.json")):
            return root / rel
    return None


def is_root(path: Path) -> bool:
    """The Real-IAD root, or one of its `realiad_<res>` image folders."""
    if (path / "realiad_jsons").is_dir():
        return True
    return path.name.startswith("realiad_") and (path.parent / "realiad_jsons").is_dir()


def _locate(path: Path) -> tuple[Path, Path]:
    """(folder of the JSON index files, folder of the category image folders)."""
    root = path if (path / "realiad_jsons").is_dir() else path.parent
    json_dir = _json_dir(root)
    if json_dir is None:
        raise DataError(
            f"{root / 'realiad_jsons'} holds no <category>.json index; unpack realiad_jsons.zip there"
        )
    if root != path:
        return json_dir, path
    for res in RESOLUTIONS:
        if (root / f"realiad_{res}").is_dir():
            return json_dir, root / f"realiad_{res}"
    raise DataError(f"{root} has no image folder realiad_256, realiad_512, realiad_1024 or realiad_raw")


def list_categories(path: str | Path) -> list[str]:
    json_dir, _ = _locate(require_dir(Path(path).absolute()))
    return sorted(p.stem for p in json_dir.glob("*.json"))


def _resolve(category_dir: Path, rel: str, index: Path, what: str) -> Path:
    # Paths are relative to the category folder; some copies of the index start with the category.
    for candidate in (category_dir / rel, category_dir.parent / rel):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{index} names {what} {rel}, which is not in {category_dir}; "
        "restore the file or use the index that matches these images"
    )


def _read_index(index: Path) -> dict:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the Real-IAD index {index}: {err}") from err
    if not isinstance(data, dict) or not any(isinstance(data.get(k), list) for k in ("train", "test")):
        raise DataError(f"{index} is not a Real-IAD index: it needs a 'train' and/or 'test' list")
    return data


def load_category(json_dir: Path, image_root: Path, category: str, split: str | None) -> list[Sample]:
    index = json_dir / f"{category}.json"
    data = _read_index(index)
    normal = str((data.get("meta") or {}).get("normal_class", "OK"))
    category_dir = image_root / category
    samples = []
    for part in ("train", "test"):
        for i, entry in enumerate(data.get(part) or []):
            if not isinstance(entry, dict) or not entry.get("image_path") or "anomaly_class" not in entry:
                raise DataError(f"{index}: {part} entry {i} lacks image_path or anomaly_class")
            image = _resolve(category_dir, entry["image_path"], index, "the image")
            defect = str(entry["anomaly_class"])
            if defect == normal:
                samples.append(Sample(str(image), None, 0, GOOD, part, category))
                continue
            mask_rel = entry.get("mask_path")
            mask = _resolve(category_dir, mask_rel, index, "the mask") if mask_rel else None
            samples.append(Sample(str(image), str(mask) if mask else None, 1, defect, part, category))
    if split != "test":
        require_train(samples, category, index)
    warn_missing_masks(select(samples, split), index)
    return select(samples, split)


def load_realiad(path: str | Path, category: str | None = None, split: str | None = None) -> list[Sample]:
    """Samples of one Real-IAD category (or of every category with an index when None)."""
    check_split(split)
    json_dir, image_root = _locate(require_dir(Path(path).absolute()))
    categories = sorted(p.stem for p in json_dir.glob("*.json"))
    if category is not None and category not in categories:
        raise DataError(
            f"no Real-IAD index {json_dir / (category + '.json')}; categories found: {categories}"
        )
    wanted = categories if category is None else [category]
    return [s for name in wanted for s in load_category(json_dir, image_root, name, split)]
