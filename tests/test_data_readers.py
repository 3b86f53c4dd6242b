"""Every reader on a tiny tree laid out as its official release is."""

from pathlib import Path

import pytest
from data_trees import make_folder_tree, make_mvtec_tree, make_realiad_tree, make_visa_tree

from diffad.data import DataWarning, detect_format, list_categories, load_samples
from diffad.data.samples import seeded_holdout
from diffad.errors import DataError


def _count(samples, split, defect):
    return sum(1 for s in samples if s.split == split and s.defect_type == defect)


def test_mvtec_category_folder(tmp_path):
    cat = make_mvtec_tree(tmp_path, defect_types=("crack", "scratch"))
    samples = load_samples(cat)
    assert detect_format(cat) == "mvtec"
    assert (_count(samples, "train", "good"), _count(samples, "test", "good")) == (6, 3)
    assert (_count(samples, "test", "crack"), _count(samples, "test", "scratch")) == (3, 3)
    assert {s.category for s in samples} == {"widget"}
    for s in samples:
        assert s.label == (s.defect_type != "good")
        if s.label:
            assert s.mask_path == str(
                cat / "ground_truth" / s.defect_type / (Path(s.image_path).stem + "_mask.png")
            )
        else:
            assert s.mask_path is None
    assert all(s.split == "test" for s in load_samples(cat, split="test"))
    assert len(load_samples(cat, split="train")) == 6


def test_mvtec_root_and_category_name(tmp_path):
    make_mvtec_tree(tmp_path, category="bottle", n_train=4)
    make_mvtec_tree(tmp_path, category="cable", n_train=5, seed=1)
    assert list_categories(tmp_path) == ["bottle", "cable"]
    assert len(load_samples(tmp_path, "cable", split="train")) == 5
    both = load_samples(tmp_path)
    assert {s.category for s in both} == {"bottle", "cable"}
    assert len(both) == (4 + 3 + 3) + (5 + 3 + 3)
    with pytest.raises(DataError, match="no MVTec AD category 'zipper'.*bottle"):
        load_samples(tmp_path, "zipper")


def test_mvtec_masks_named_like_their_image(tmp_path):
    # BTAD / MPDD style: ground_truth/<defect>/<stem>.png
    cat = make_mvtec_tree(tmp_path, n_defect=2)
    for mask in (cat / "ground_truth" / "scratch").iterdir():
        mask.rename(mask.with_name(mask.name.replace("_mask", "")))
    defects = [s for s in load_samples(cat) if s.label]
    assert [Path(s.mask_path).name for s in defects] == ["000.png", "001.png"]


def test_visa(tmp_path):
    root = make_visa_tree(tmp_path, "candle", n_train=5, n_good_test=2, n_defect=2)
    make_visa_tree(tmp_path, "pcb1", n_train=3, n_good_test=1, n_defect=1, seed=1)
    assert detect_format(root) == "visa"
    assert list_categories(root) == ["candle", "pcb1"]
    candle = load_samples(root, "candle")
    assert (_count(candle, "train", "good"), _count(candle, "test", "good")) == (5, 2)
    defects = [s for s in candle if s.label]
    assert len(defects) == 2
    # image_anno.csv's name, made folder-safe
    assert {s.defect_type for s in defects} == {"chunk_of_wax_missing+weird_wick"}
    for s in defects:
        assert s.split == "test" and Path(s.mask_path).is_file()
        assert Path(s.mask_path).stem == Path(s.image_path).stem
    assert len(load_samples(root)) == 9 + 5


def test_visa_without_image_anno_calls_defects_anomaly(tmp_path):
    root = make_visa_tree(tmp_path)
    (root / "candle" / "image_anno.csv").unlink()
    assert {s.defect_type for s in load_samples(root, split="test") if s.label} == {"anomaly"}


def test_realiad_root_and_resolution_folder(tmp_path):
    root = make_realiad_tree(
        tmp_path, "audiojack", n_train_objects=2, n_good_test_objects=1, n_defect_objects=1
    )
    make_realiad_tree(tmp_path, "toy_brick", n_train_objects=1, seed=1)
    assert detect_format(root) == "realiad"
    assert list_categories(root) == ["audiojack", "toy_brick"]
    samples = load_samples(root, "audiojack")
    # five views per object, each a sample
    assert (
        _count(samples, "train", "good"),
        _count(samples, "test", "good"),
        _count(samples, "test", "HS"),
    ) == (
        10,
        5,
        5,
    )
    views = sorted(Path(s.image_path).name.split("_")[4] for s in samples if s.label)
    assert views == ["C1", "C2", "C3", "C4", "C5"]
    for s in samples:
        assert Path(s.image_path).is_file()
        assert (s.mask_path is not None) == bool(s.label)
        assert "realiad_256" in s.image_path
    assert load_samples(root / "realiad_256", "audiojack") == samples
    assert len(load_samples(root)) == 20 + 15


def test_realiad_picks_resolution_folder(tmp_path):
    make_realiad_tree(tmp_path, resolution="512")
    make_realiad_tree(tmp_path, resolution="1024", seed=3)
    assert all("realiad_512" in s.image_path for s in load_samples(tmp_path))
    assert all("realiad_1024" in s.image_path for s in load_samples(tmp_path / "realiad_1024"))


def test_realiad_index_paths_starting_with_the_category(tmp_path):
    import json

    root = make_realiad_tree(tmp_path)
    index = root / "realiad_jsons" / "realiad_jsons" / "audiojack.json"
    data = json.loads(index.read_text())
    for e in data["train"] + data["test"]:
        e["image_path"] = "audiojack/" + e["image_path"]
    index.write_text(json.dumps(data))
    assert len(load_samples(root)) == 20


def test_plain_folder_alone_trains_on_everything(tmp_path):
    good, _, _ = make_folder_tree(tmp_path, n_good=7)
    samples = load_samples(good)
    assert detect_format(good) == "folder"
    assert len(samples) == 7 and {(s.split, s.label, s.category) for s in samples} == {("train", 0, "good")}


def test_plain_folder_with_defects_and_masks(tmp_path):
    good, defects, masks = make_folder_tree(tmp_path, n_good=10, n_defect=2)
    samples = load_samples(good, defects=defects, masks=masks)
    assert (_count(samples, "train", "good"), _count(samples, "test", "good")) == (8, 2)
    bad = [s for s in samples if s.label]
    assert [Path(s.mask_path).name for s in bad] == ["d000_mask.png", "d001_mask.png"]
    held = {Path(s.image_path).name for s in samples if s.split == "test" and not s.label}
    assert held == seeded_holdout([f"g{i:03d}.png" for i in range(10)], 0.2, 0)


def test_plain_folder_defect_subfolders_are_types(tmp_path):
    good, defects, masks = make_folder_tree(tmp_path, n_defect=1)
    (defects / "dent").mkdir()
    (defects / "d000.png").rename(defects / "dent" / "d000.png")
    (masks / "dent").mkdir()
    (masks / "d000_mask.png").rename(masks / "dent" / "d000.png")
    [bad] = [s for s in load_samples(good, defects=defects, masks=masks) if s.label]
    assert bad.defect_type == "dent" and bad.mask_path == str(masks / "dent" / "d000.png")


def test_plain_folder_without_mask_folder_does_not_warn(tmp_path, recwarn):
    good, defects, _ = make_folder_tree(tmp_path)
    samples = load_samples(good, defects=defects)
    assert sum(s.label for s in samples) == 2 and all(s.mask_path is None for s in samples)
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]


def test_elpv_counts_match_the_package_labels():
    # The package's labels.csv holds 588 good (p=0) and 313 defective (p=1) mono cells,
    # 920 and 402 poly; 1/3 and 2/3 are left out. A fifth of the good cells (rounded) test.
    mono = load_samples("elpv", "mono")
    assert detect_format("elpv") == "elpv" and list_categories("elpv") == ["mono", "poly"]
    assert (
        _count(mono, "train", "good"),
        _count(mono, "test", "good"),
        _count(mono, "test", "defective"),
    ) == (
        470,
        118,
        313,
    )
    poly = load_samples("elpv", "poly", split="test")
    assert (_count(poly, "test", "good"), _count(poly, "test", "defective")) == (184, 402)
    assert all(Path(s.image_path).is_file() for s in mono[:5])
    assert load_samples("elpv", "mono") == mono  # deterministic
    with pytest.raises(DataError, match="mono"):
        load_samples("elpv", "thin-film")


def test_seeded_holdout_ignores_listing_order():
    names = [f"n{i}" for i in range(50)]
    held = seeded_holdout(names, 0.2, seed=0)
    assert len(held) == 10 and held == seeded_holdout(list(reversed(names)), 0.2, seed=0)
    assert held != seeded_holdout(names, 0.2, seed=1)


def test_elpv_summary_command(capsys):
    from diffad.cli import main

    assert main(["data", "summary", "elpv", "--category", "mono"]) == 0
    out = capsys.readouterr().out
    assert "all: 901 images, 588 good, 313 defective" in out
    # labels.csv: 117 mono cells at p=1/3 and 56 at p=2/3
    assert "173 uncertain cells" in out
