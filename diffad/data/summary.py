"""What a dataset holds: counts per split and defect type, masks, image sizes and modes, problems."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from diffad.data.images import listed, mask_is_empty, size_warning
from diffad.data.samples import DataWarning, Sample


@dataclass
class CategorySummary:
    category: str
    counts: Counter = field(default_factory=Counter)  # (split, defect_type) -> images
    masks: Counter = field(default_factory=Counter)  # (split, defect_type) -> images with a mask
    sizes: Counter = field(default_factory=Counter)  # "WxH" -> images
    modes: Counter = field(default_factory=Counter)  # Pillow mode -> images
    mask_modes: Counter = field(default_factory=Counter)


def _header(path: str, what: str) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """(size, mode, problem): reads the header and checks the file's structure without decoding."""
    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
            img.verify()  # PNG: chunk checksums and truncation; cheap compared with decoding
        return size, mode, None
    except FileNotFoundError:
        return None, None, f"{what} {path} does not exist"
    except UnidentifiedImageError:
        return None, None, f"{what} {path} is not an image Pillow can read"
    except (OSError, SyntaxError, ValueError) as err:
        return None, None, f"{what} {path} is truncated or corrupt ({err})"


def summarize(samples: Sequence[Sample]) -> tuple[list[CategorySummary], list[str]]:
    """Per-category summaries (in order of appearance) and a list of problems found, each naming files.
    Images of sizes that detect poorly and defect masks with no defective pixel are DataWarnings."""
    summaries: dict[str, CategorySummary] = {}
    problems: list[str] = []
    odd_sizes: list[str] = []
    empty_masks: list[str] = []
    for s in tqdm(samples, desc="checking images", unit="img", disable=None, leave=False):
        summary = summaries.setdefault(s.category, CategorySummary(s.category))
        key = (s.split, s.defect_type)
        summary.counts[key] += 1
        size, mode, problem = _header(s.image_path, "image")
        if problem:
            problems.append(problem)
            continue
        summary.sizes[f"{size[0]}x{size[1]}"] += 1
        if warning := size_warning(s.image_path, *size):
            odd_sizes.append(warning)
        summary.modes[mode] += 1
        if s.mask_path is None:
            continue
        summary.masks[key] += 1
        mask_size, mask_mode, problem = _header(s.mask_path, "mask")
        if problem:
            problems.append(problem)
        elif mask_size != size:
            problems.append(
                f"mask {s.mask_path} is {mask_size[0]}x{mask_size[1]} but its image {s.image_path} "
                f"is {size[0]}x{size[1]}"
            )
        else:
            summary.mask_modes[mask_mode] += 1
            if s.label == 1 and mask_is_empty(s.mask_path):
                empty_masks.append(f"{s.mask_path} (of {s.image_path})")
    if odd_sizes:
        warnings.warn(
            listed(odd_sizes, "image of a size that detects poorly", "images of sizes that detect poorly"),
            DataWarning,
            stacklevel=2,
        )
    if empty_masks:
        warnings.warn(
            listed(empty_masks, "defect mask with no defective pixel", "defect masks with no defective pixel")
            + ": those images count for the image metrics only; fix the masks or move the images to good",
            DataWarning,
            stacklevel=2,
        )
    return list(summaries.values()), problems


def _counter_text(counter: Counter) -> str:
    return ", ".join(f"{k} ({n})" for k, n in counter.most_common()) or "-"


def format_summary(title: str, summaries: Sequence[CategorySummary]) -> str:
    lines = [title]
    for summary in summaries:
        width = max([len("defect type"), *(len(d) for _, d in summary.counts)]) + 2
        lines += [
            "",
            f"category {summary.category}",
            f"  {'split':<6} {'defect type':<{width}} {'images':>7} {'masks':>7}",
        ]
        order = sorted(summary.counts, key=lambda k: (k[0] != "train", k[1] != "good", k[1]))
        for split, defect in order:
            n, m = summary.counts[(split, defect)], summary.masks[(split, defect)]
            masks = "-" if defect == "good" and m == 0 else str(m)
            lines.append(f"  {split:<6} {defect:<{width}} {n:>7} {masks:>7}")
        for split in ("train", "test", None):
            total = sum(n for (sp, _), n in summary.counts.items() if split in (None, sp))
            defective = sum(n for (sp, d), n in summary.counts.items() if split in (None, sp) and d != "good")
            masks = sum(n for (sp, _), n in summary.masks.items() if split in (None, sp))
            if total:
                lines.append(
                    f"  {split or 'all'}: {total} images, {total - defective} good, {defective} defective, "
                    f"{masks} masks"
                )
        lines.append(f"  image sizes (WxH): {_counter_text(summary.sizes)}")
        lines.append(f"  image modes: {_counter_text(summary.modes)}")
        if summary.mask_modes:
            lines.append(f"  mask modes: {_counter_text(summary.mask_modes)}")
    return "\n".join(lines)
