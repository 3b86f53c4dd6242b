"""The ELPV solar-cell images shipped in the `elpv-dataset` package (2,624 cells, 300x300, 8-bit).

Each cell has an expert's defect probability (0, 1/3, 2/3, 1) and a type (mono, poly), which is
the category. Good = probability 0, defective = probability 1; the uncertain 1/3 and 2/3 cells
are left out. ELPV has no official split: per category, a seeded fifth of the good cells
(`seeded_holdout`, seed 0) and all defective cells are the test set; the other good cells train.
For mono that is 470 train good, 118 test good, 313 test defective.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from diffad.data.samples import GOOD, Sample, check_split, seeded_holdout, select
from diffad.errors import DataError

NAME = "elpv"
CATEGORIES = ("mono", "poly")
TEST_FRACTION = 0.2
SEED = 0


def labels_file() -> Path:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise DataError("the ELPV images come with the elpv-dataset package: pip install 'diffad[demo]'")
    path = Path(spec.origin).parent / "data" / "labels.csv"
    if not path.is_file():
        raise DataError(f"the elpv-dataset package has no {path}; reinstall it")
    return path


def _read_labels(path: Path) -> list[tuple[str, float, str]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DataError(f"{path}:{n}: expected 'path probability type', got {line!r}")
        rows.append((parts[0], float(parts[1]), parts[2]))
    return rows


def load_elpv(category: str | None = None, split: str | None = None) -> list[Sample]:
    """ELPV cells of one type ("mono" | "poly") or both, with the seeded split described above."""
    check_split(split)
    if category is not None and category not in CATEGORIES:
        raise DataError(f"ELPV categories are {list(CATEGORIES)}, not {category!r}")
    labels = labels_file()
    rows = _read_labels(labels)
    samples = []
    for name in CATEGORIES if category is None else (category,):
        good = [p for p, prob, kind in rows if kind == name and prob == 0.0]
        bad = [p for p, prob, kind in rows if kind == name and prob == 1.0]
        held_out = seeded_holdout(good, TEST_FRACTION, SEED)
        for rel in sorted(good):
            split_of = "test" if rel in held_out else "train"
            samples.append(Sample(str(labels.parent / rel), None, 0, GOOD, split_of, name))
        samples += [
            Sample(str(labels.parent / rel), None, 1, "defective", "test", name) for rel in sorted(bad)
        ]
    return select(samples, split)


def note(category: str | None = None) -> str:
    """A line for summaries: what was left out, and that the split is this package's own."""
    rows = _read_labels(labels_file())
    unsure = sum(1 for _, prob, kind in rows if prob not in (0.0, 1.0) and category in (None, kind))
    return (
        f"{unsure} uncertain cells (defect probability 1/3 or 2/3) left out; ELPV has no official "
        f"split: {TEST_FRACTION:.0%} of good cells (seed {SEED}) and all defective cells are the test set"
    )
