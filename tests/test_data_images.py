"""load_image / load_mask on every Pillow mode, and AnomalyDataset over mixed sizes."""

import numpy as np
import pytest
import torch
from data_trees import make_mvtec_tree
from PIL import Image
from torch.utils.data import DataLoader

from diffad.data import AnomalyDataset, load_image, load_mask, load_samples


def _save(tmp_path, img, name="x.png"):
    path = tmp_path / name
    img.save(path)
    return path


def _unit(v):  # 8-bit value -> [-1, 1]
    return v / 255 * 2 - 1


@pytest.mark.parametrize(
    "make, rgb",
    [
        (lambda: Image.new("L", (4, 3), 200), (200, 200, 200)),
        (lambda: Image.new("RGB", (4, 3), (255, 0, 10)), (255, 0, 10)),
        (lambda: Image.new("RGBA", (4, 3), (10, 20, 30, 0)), (10, 20, 30)),  # alpha dropped
        (lambda: Image.new("LA", (4, 3), (90, 255)), (90, 90, 90)),
        (lambda: Image.new("1", (4, 3), 1), (255, 255, 255)),
    ],
)
def test_eight_bit_modes(tmp_path, make, rgb):
    path = _save(tmp_path, make())
    x = load_image(path, channels=3)
    assert x.shape == (3, 3, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([_unit(v) for v in rgb]), atol=1e-6, rtol=0)
    # ITU-R 601-2 luma, as Pillow documents for convert("L"), rounded to 8 bits
    luma = round(rgb[0] * 299 / 1000 + rgb[1] * 587 / 1000 + rgb[2] * 114 / 1000)
    assert abs(load_image(path, channels=1)[0, 0, 0].item() - _unit(luma)) <= 1 / 255 + 1e-6


def test_palette_image_reads_its_colours(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    x = load_image(_save(tmp_path, img))
    torch.testing.assert_close(x[:, 0, 1], torch.tensor([-1.0, 1.0, -1.0]))
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([-1.0, -1.0, -1.0]))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit(tmp_path, mode):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr).convert(mode) if mode == "I" else Image.fromarray(arr)
    assert img.mode == mode
    path = _save(tmp_path, img, "x.tif")  # Pillow writes mode I to TIFF, not PNG
    x = load_image(path, channels=1)
    expected = torch.tensor([0, 32768, 65535]) / 65535 * 2 - 1
    torch.testing.assert_close(x[0, 0], expected.float(), atol=1e-6, rtol=0)
    assert load_image(path, channels=3).shape == (3, 1, 3)


def test_resize_sizes_and_range(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(tmp_path, Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)))
    assert load_image(path, size=8).shape == (3, 8, 8)
    x = load_image(path, size=(10, 6))
    assert x.shape == (3, 10, 6) and x.min() >= -1 and x.max() <= 1
    flat = _save(tmp_path, Image.new("L", (17, 9), 77), "flat.png")
    torch.testing.assert_close(load_image(flat, 1, 5), torch.full((1, 5, 5), _unit(77)))


def test_downsizing_antialiases(tmp_path):
    # A one-pixel checkerboard averages to mid grey when shrunk 4x; without antialiasing
    # bicubic sampling would keep (near) extreme values.
    board = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    x = load_image(_save(tmp_path, Image.fromarray(board)), channels=1, size=8)
    assert x.abs().max() < 0.1


def test_masks_binarise_and_resize_nearest(tmp_path):
    arr = np.array([[0, 1], [255, 0]], dtype=np.uint8)  # VisA masks hold 1, MVTec masks 255
    path = _save(tmp_path, Image.fromarray(arr), "m.png")
    m = load_mask(path)
    torch.testing.assert_close(m, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    big = load_mask(path, size=6)
    torch.testing.assert_close(big[0], torch.from_numpy(np.kron(arr > 0, np.ones((3, 3)))).float())
    rgb = _save(tmp_path, Image.fromarray(np.stack([arr * 0, arr, arr * 0], -1)), "rgb.png")
    torch.testing.assert_close(load_mask(rgb), m)


def test_dataset_mixed_sizes_and_alignment(tmp_path):
    cat = make_mvtec_tree(tmp_path, size=32, n_train=2, n_good_test=1, n_defect=2)
    # another size and mode in the same set is normal
    Image.new("RGB", (40, 24), (9, 9, 9)).save(cat / "train" / "good" / "wide.png")
    Image.new("L", (16, 16), 30).save(cat / "test" / "good" / "small.png")
    ds = AnomalyDataset(load_samples(cat), resolution=32, channels=3)
    assert len(ds) == 3 + 2 + 2
    for item in ds:
        assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        if item["label"]:
            assert item["has_mask"] and item["mask"].sum() > 0
            # the defect in the tree is a bright (250) square exactly under the mask
            assert item["image"][:, item["mask"][0] > 0].mean() > 0.9
        else:
            assert item["mask"].sum() == 0
    batch = next(iter(DataLoader(ds, batch_size=7)))
    assert batch["image"].shape == (7, 3, 32, 32) and batch["label"].tolist() == [0, 0, 0, 0, 0, 1, 1]


def test_dataset_rectangular_resolution_and_one_channel(tmp_path):
    cat = make_mvtec_tree(tmp_path, size=32, channels=1, n_train=1, n_good_test=0, n_defect=1)
    item = AnomalyDataset(load_samples(cat, split="test"), resolution=(8, 12), channels=1)[0]
    assert item["image"].shape == (1, 8, 12) and item["mask"].shape == (1, 8, 12)
    assert item["path"].endswith("000.png") and item["label"] == 1
