"""Panels, the three evaluation outputs, and the page as headless Chromium draws it."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from browser import CHROMIUM, SKIP_REASON, chromium
from matplotlib import colormaps
from PIL import Image

from diffad.errors import ConfigError
from diffad.metrics import METRIC_KEYS, compute_metrics
from diffad.report.outputs import write_outputs
from diffad.report.panels import colorize, make_panel, mask_to_rgb8, overlay, save_panel, to_rgb8
from diffad.report.results import CategoryResults, select_cases


def jet(value: float) -> np.ndarray:
    return (np.array(colormaps["jet"](value)[:3]) * 255 + 0.5).astype(np.uint8)


def test_to_rgb8_conventions():
    tensor = torch.tensor([[[-1.0, 0.0, 1.0]]])  # (C=1, H=1, W=3) in [-1, 1]
    assert to_rgb8(tensor)[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
    floats = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)  # (H, W, C) in [0, 1]
    assert to_rgb8(floats)[0, 0].tolist() == [0, 128, 255]
    uint8 = np.full((2, 2), 7, dtype=np.uint8)
    assert to_rgb8(uint8).shape == (2, 2, 3) and (to_rgb8(uint8) == 7).all()
    assert to_rgb8(Image.fromarray(uint8)).tolist() == to_rgb8(uint8).tolist()
    with pytest.raises(ConfigError, match="channels first"):
        to_rgb8(np.zeros((3, 8, 8), dtype=np.float32))


def test_colorize_spans_the_colour_map_and_clips():
    amap = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    rgb = colorize(amap, vmin=1.0, vmax=3.0)
    assert rgb[0, 0].tolist() == jet(0.0).tolist()  # below vmin: clipped to the lowest colour
    assert rgb[0, 1].tolist() == jet(0.0).tolist()
    assert rgb[1, 0].tolist() == jet(0.5).tolist()
    assert rgb[1, 1].tolist() == jet(1.0).tolist()
    assert colorize(torch.zeros(1, 4, 4)).tolist() == colorize(np.zeros((4, 4))).tolist()


def test_overlay_blends_and_resizes_the_map():
    image = np.full((8, 8, 3), 200, dtype=np.uint8)
    amap = np.ones((4, 4), dtype=np.float32)
    assert (overlay(image, amap, alpha=0.0) == 200).all()
    full = overlay(image, amap, alpha=1.0, vmin=0, vmax=1)
    assert full.shape == (8, 8, 3) and (full == jet(1.0)).all()
    half = overlay(image, amap, alpha=0.5, vmin=0, vmax=1)
    assert half[0, 0].tolist() == [int(0.5 * 200 + 0.5 * c + 0.5) for c in jet(1.0)]


def test_make_panel_places_tiles_and_save_panel_writes_it(tmp_path):
    red = np.zeros((10, 10, 3), dtype=np.uint8)
    red[..., 0] = 255
    green = np.zeros((10, 10, 3), dtype=np.uint8)
    green[..., 1] = 255
    panel = make_panel([[red, green], [green, red]], tile_size=10)
    assert panel.shape == (10 + 4 + 10, 10 + 4 + 10, 3)  # two tiles and a 4 px gap each way
    assert panel[0, 0].tolist() == [255, 0, 0] and panel[0, 14].tolist() == [0, 255, 0]
    assert panel[14, 0].tolist() == [0, 255, 0] and panel[14, 14].tolist() == [255, 0, 0]
    titled = make_panel([red, green], column_titles=["input", "map"], row_labels=["a long label"])
    assert titled.shape[0] > 96 and titled.shape[1] > 2 * 96  # enlarged to 96 px, room for text
    path = save_panel(tmp_path / "sub" / "panel.png", [[red, green], [green, red]], tile_size=10)
    assert np.asarray(Image.open(path)).tolist() == panel.tolist()
    assert [p.name for p in path.parent.iterdir()] == ["panel.png"]  # no temporary file left
    assert mask_to_rgb8(np.array([[0, 255]], dtype=np.uint8))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def synthetic(
    name: str, seed: int, n: int = 10, size: int = 32, empty_masks: bool = False
) -> CategoryResults:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n // 2, n):
        y, x = rng.integers(0, size - 10, 2)
        masks[i, y : y + 8, x : x + 10] = 0 if empty_masks else 1
    maps = rng.random((n, size, size)).astype(np.float32) + 0.7 * masks
    inputs = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    types = ["good"] * (n // 2) + [("crack", "hole")[i % 2] for i in range(n - n // 2)]
    return CategoryResults(
        category=name,
        paths=[f"/data/{name}/test/{t}/{i:03d}.png" for i, t in enumerate(types)],
        labels=np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int),
        defect_types=types,
        scores=maps.max(axis=(1, 2)) + rng.normal(0, 0.1, n),
        maps=maps,
        masks=masks,
        inputs=inputs,
        reconstructions=[np.clip(x.astype(np.float32) / 255 + 0.1, 0, 1) for x in inputs],
        seconds=0.5,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = [synthetic("bottle", 0), synthetic("cable", 1, empty_masks=True)]
    with pytest.warns(UserWarning, match="undefined"):  # cable has no mask pixels
        document = write_outputs(out, results, {"model": "tiny"}, num_cases=2)
    return out, results, document


def test_metrics_json_has_every_key_and_the_mean_row(written):
    out, results, document = written
    saved = json.loads(
        (out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON")
    )
    assert saved == document
    for key in (*METRIC_KEYS, "per_defect", "num_images", "seconds_per_image", "settings", "per_category"):
        assert key in saved
    assert saved["num_images"] == 20 and saved["seconds_per_image"] == pytest.approx(1.0 / 20)
    bottle, cable = saved["per_category"]["bottle"], saved["per_category"]["cable"]
    want = compute_metrics(results[0].scores, results[0].labels, results[0].maps, results[0].masks)
    assert all(bottle[k] == pytest.approx(want[k]) for k in METRIC_KEYS)
    assert cable["pixel_auroc"] is None and cable["aupro"] is None  # undefined (NaN) -> null
    assert saved["image_auroc"] == pytest.approx((bottle["image_auroc"] + cable["image_auroc"]) / 2)
    assert saved["pixel_auroc"] is None  # a mean over categories with one undefined is undefined
    assert saved["mad_of"] == ["image_auroc", "image_ap", "image_f1_max"]
    # A defect type is scored together with the good images of its category.
    r = results[0]
    chosen = [i for i, t in enumerate(r.defect_types) if t in ("good", "hole")]
    hole = compute_metrics(
        r.scores[chosen], r.labels[chosen], [r.maps[i] for i in chosen], [r.masks[i] for i in chosen]
    )
    assert saved["per_defect"]["bottle/hole"]["pixel_ap"] == pytest.approx(hole["pixel_ap"])


def test_scores_csv_has_a_row_per_image(written):
    out, results, _ = written
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "defect_type", "score", "category"]
    assert len(rows) == 20
    assert rows[7]["path"] == results[0].paths[7] and rows[7]["defect_type"] == results[0].defect_types[7]
    assert float(rows[7]["score"]) == pytest.approx(results[0].scores[7])


def test_report_is_one_offline_page(written):
    out, _, _ = written
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    # Per category: curves, histogram, and 2 best + 2 worst cases of 4 tiles each.
    assert len(sources) == 2 * (2 + 4 * 4)
    for row in ("<td>bottle</td>", "<td>cable</td>", '<tr class="mean"><td>mean</td>'):
        assert row in page


def test_without_masks_pixel_metrics_are_not_computed(tmp_path):
    r = synthetic("elpv", 3)
    r = CategoryResults(r.category, r.paths, r.labels, r.defect_types, r.scores, r.maps, None, r.inputs)
    document = write_outputs(tmp_path, [r], {})
    assert all(document[k] is None for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"))
    assert document["mad_of"] == ["image_auroc", "image_ap", "image_f1_max"]
    assert document["per_defect"]["crack"]["aupro"] is None
    page = (tmp_path / "report.html").read_text()
    assert "ground truth" not in page and page.count("data:image/png;base64,") == 2 + 8 * 2


def test_select_cases_takes_both_classes_without_repeats():
    r = synthetic("x", 2)
    r.scores = np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.8, 0.3, 0.95, 0.6, 0.7])
    best, worst = select_cases(r, threshold=0.6, count=4)
    # Good (0-4): the lowest are best, the highest (false alarm 0.9) worst; defective (5-9) the reverse.
    assert set(best) == {0, 2, 7, 5} and set(worst) == {3, 1, 6, 8}


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_chromium_renders_the_table_and_the_panels(written, tmp_path):
    out, _, _ = written
    page = (out / "report.html").resolve().as_uri()
    dom = chromium(tmp_path, "--dump-dom", page, text=True).stdout
    assert "I-AUROC" in dom and "<td>bottle</td>" in dom and "Worst cases" in dom
    shot = tmp_path / "page.png"
    chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", page)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The overlays' deep blue (jet's low end) and the masks' pure white on black only appear if
    # the inlined PNGs were decoded and drawn.
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 60) & (pixels[..., 1] < 60)
    black = (pixels.sum(-1) == 0).sum()
    assert blue.sum() > 2000 and black > 2000


def test_a_test_split_of_good_images_only_says_there_are_no_defects(tmp_path, monkeypatch):
    from diffad.report import figures

    r = synthetic("widget", 4, n=6)
    good = [i for i in range(6) if r.labels[i] == 0]
    r = CategoryResults(
        r.category, [r.paths[i] for i in good], r.labels[good], [r.defect_types[i] for i in good],
        r.scores[good], [r.maps[i] for i in good], None, [r.inputs[i] for i in good],
    )  # fmt: skip
    legends = []
    real_curves = figures.curves_png
    monkeypatch.setattr(figures, "curves_png", lambda *a, **k: legends.append(a[3]) or real_curves(*a, **k))
    with pytest.warns(UserWarning):  # AUROC and the rest are undefined
        write_outputs(tmp_path, [r], {})
    page = (tmp_path / "report.html").read_text()
    assert "threshold nan" not in page and "no defective images in this test split" in page
    assert figures._label("AUROC", legends[0]) is None  # no curve drawn with an empty legend


def test_case_captions_give_the_folder_and_every_score_three_decimals(written):
    out, results, _ = written
    page = (out / "report.html").read_text()
    captions = re.findall(r"score (-?\d+\.\d+) · ([^<]+)<", page)
    assert captions and all(len(score.split(".")[1]) == 3 for score, _ in captions)
    assert all(re.fullmatch(r"(good|crack|hole)/\d{3}\.png", name) for _, name in captions), captions
    assert re.search(r"threshold -?\d+\.\d{3};", page)
