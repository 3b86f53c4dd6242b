"""Bad input: each case raises DataError (or warns) naming the file; the CLI exits 2 without a traceback."""

import json
import shutil
from pathlib import Path

import pytest
from data_trees import make_mvtec_tree, make_realiad_tree, make_visa_tree
from PIL import Image

from diffad.cli import main
from diffad.data import AnomalyDataset, DataWarning, load_image, load_samples
from diffad.errors import DataError


def _cli(capsys, *args):
    code = main(["data", "summary", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_missing_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        load_samples(missing)
    code, _, err = _cli(capsys, missing)
    assert code == 2 and str(missing) in err


def test_folder_of_nothing_recognisable(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = _cli(capsys, tmp_path)
    assert code == 2 and "cannot tell the layout" in err


def test_category_without_train_images(tmp_path, capsys):
    cat = make_mvtec_tree(tmp_path, n_train=1)
    (cat / "train" / "good" / "000.png").unlink()
    with pytest.raises(DataError, match="'widget'.*no training images"):
        load_samples(cat)
    assert len(load_samples(cat, split="test")) == 6  # evaluating needs no train images
    code, _, err = _cli(capsys, cat)
    assert code == 2 and "no training images" in err and str(cat) in err


def test_file_that_is_not_an_image(tmp_path, capsys):
    cat = make_mvtec_tree(tmp_path)
    fake = cat / "train" / "good" / "notes.png"
    fake.write_text("this is not a PNG")
    with pytest.raises(DataError, match=f"{fake} is not an image"):
        load_image(fake)
    code, out, err = _cli(capsys, cat)
    assert code == 2 and f"{fake} is not an image" in err and "train" in out


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image(tmp_path, capsys, suffix):
    cat = make_mvtec_tree(tmp_path)
    cut = cat / "train" / "good" / f"cut{suffix}"
    Image.effect_noise((64, 64), 40).convert("RGB").save(cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(DataError, match=f"{cut} is truncated or corrupt"):
        load_image(cut)
    samples = load_samples(cat, split="train")
    index = [s.image_path for s in samples].index(str(cut))
    with pytest.raises(DataError, match=str(cut)):
        AnomalyDataset(samples, 16)[index]
    if suffix == ".png":  # the summary checks PNG structure; JPEG is only caught on decoding
        code, _, err = _cli(capsys, cat)
        assert code == 2 and str(cut) in err


def test_mask_size_differs_from_image(tmp_path, capsys):
    cat = make_mvtec_tree(tmp_path, size=32, n_defect=1)
    mask = cat / "ground_truth" / "scratch" / "000_mask.png"
    Image.new("L", (30, 32), 255).save(mask)
    image = cat / "test" / "scratch" / "000.png"
    samples = load_samples(cat, split="test")
    item = [s.image_path for s in samples].index(str(image))
    with pytest.raises(DataError) as err:
        AnomalyDataset(samples, 16)[item]
    assert str(mask) in str(err.value) and str(image) in str(err.value) and "30x32" in str(err.value)
    code, _, err_text = _cli(capsys, cat)
    assert code == 2 and str(mask) in err_text and str(image) in err_text


def test_defect_without_mask_warns_and_keeps_label(tmp_path, capsys):
    cat = make_mvtec_tree(tmp_path, n_defect=2)
    (cat / "ground_truth" / "scratch" / "001_mask.png").unlink()
    image = cat / "test" / "scratch" / "001.png"
    with pytest.warns(DataWarning, match=f"1 defect image.*{image}.*label 1"):
        samples = load_samples(cat)
    [orphan] = [s for s in samples if s.image_path == str(image)]
    assert orphan.label == 1 and orphan.mask_path is None
    item = AnomalyDataset([orphan], 16)[0]
    assert item["label"] == 1 and not item["has_mask"] and item["mask"].sum() == 0
    code, _, err = _cli(capsys, cat)
    assert code == 0 and "warning" in err and str(image) in err


def test_unreadable_mask(tmp_path, capsys):
    cat = make_mvtec_tree(tmp_path, n_defect=1)
    mask = cat / "ground_truth" / "scratch" / "000_mask.png"
    mask.write_bytes(b"\x89PNG garbage")
    [sample] = [s for s in load_samples(cat, split="test") if s.label]
    with pytest.raises(DataError, match=f"mask {mask}"):
        AnomalyDataset([sample], 16)[0]
    code, _, err = _cli(capsys, cat)
    assert code == 2 and f"mask {mask}" in err


def test_visa_index_names_missing_files(tmp_path, capsys):
    root = make_visa_tree(tmp_path)
    gone = root / "candle" / "Data" / "Images" / "Normal" / "0001.JPG"
    gone.unlink()
    index = root / "split_csv" / "1cls.csv"
    with pytest.raises(DataError, match=f"{index} names the image {gone}"):
        load_samples(root)
    code, _, err = _cli(capsys, root)
    assert code == 2 and str(gone) in err
    shutil.rmtree(root / "candle" / "Data" / "Masks")
    Image.new("RGB", (32, 32)).save(gone)
    with pytest.raises(DataError, match="names the mask .*000.png"):
        load_samples(root)


def test_visa_index_with_wrong_columns(tmp_path):
    root = make_visa_tree(tmp_path)
    (root / "split_csv" / "1cls.csv").write_text("object,image\ncandle,x.JPG\n")
    with pytest.raises(DataError, match=r"1cls.csv lacks the column\(s\) \['split', 'label', 'mask'\]"):
        load_samples(root)


def test_realiad_index_names_missing_files(tmp_path, capsys):
    root = make_realiad_tree(tmp_path)
    index = root / "realiad_jsons" / "realiad_jsons" / "audiojack.json"
    data = json.loads(index.read_text())
    gone = data["test"][-1]["image_path"]
    (root / "realiad_256" / "audiojack" / gone).unlink()
    with pytest.raises(DataError, match=f"{index} names the image {gone}"):
        load_samples(root)
    code, _, err = _cli(capsys, root)
    assert code == 2 and gone in err and str(index) in err
    mask = data["test"][0]["mask_path"] or data["test"][-2]["mask_path"]
    (root / "realiad_256" / "audiojack" / mask).unlink()
    data["test"] = data["test"][:-1]
    index.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"names the mask {mask}"):
        load_samples(root)


def test_realiad_index_that_is_not_json(tmp_path):
    root = make_realiad_tree(tmp_path)
    index = root / "realiad_jsons" / "realiad_jsons" / "audiojack.json"
    index.write_text("{not json")
    with pytest.raises(DataError, match=f"cannot read the Real-IAD index {index}"):
        load_samples(root)


def test_bad_split_and_unknown_category(tmp_path):
    cat = make_mvtec_tree(tmp_path)
    with pytest.raises(DataError, match="split must be"):
        load_samples(cat, split="val")
    with pytest.raises(DataError, match="no VisA object 'pcb9'"):
        load_samples(make_visa_tree(tmp_path / "visa"), "pcb9")
    with pytest.raises(DataError, match="for a plain folder"):
        load_samples(cat, defects=Path(tmp_path))


def test_summary_prints_counts(tmp_path, capsys):
    cat = make_mvtec_tree(tmp_path, n_train=6, n_good_test=3, n_defect=2, defect_types=("crack", "hole"))
    code, out, _ = _cli(capsys, cat)
    assert code == 0
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines() if line.startswith("  t")}
    assert rows[("train", "good")] == ["6", "-"] and rows[("test", "good")] == ["3", "-"]
    assert rows[("test", "crack")] == ["2", "2"] and rows[("test", "hole")] == ["2", "2"]
    assert "32x32 (13)" in out and "RGB (13)" in out
