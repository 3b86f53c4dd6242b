"""`diffad serve`: the inspection page, served on 127.0.0.1 and driven by gradio_client (one server
for the module), and a headless Chromium screenshot of it (slow)."""

import csv
import io
import socket
import zipfile

import numpy as np
import pytest
import torch
from browser import CHROMIUM, SKIP_REASON, chromium
from PIL import Image
from test_pipeline import tiny_pipeline

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from diffad.app import inspection  # noqa: E402
from diffad.app.page import build_page, launch  # noqa: E402

SIZE = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A grey image, a colour one with alpha, a 16-bit one, a text file and a truncated PNG."""
    folder = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 65535, (18, 18), dtype=np.uint16)).save(folder / "deep.png")
    bad = tmp_path_factory.mktemp("bad")
    (bad / "notes.txt").write_text("not an image")
    (bad / "cut.png").write_bytes((folder / "grey.png").read_bytes()[:60])
    return folder, bad


@pytest.fixture(scope="module")
def served(tmp_path_factory, parts):
    """A tiny calibrated pipeline with a saved threshold, its inspector (counting model runs) and the
    page listening on 127.0.0.1, with a client."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("model")
    pipe = tiny_pipeline("kl", channels=1)
    pipe.calibrate(
        np.random.default_rng(0).uniform(size=(3, SIZE, SIZE, 1)).astype(np.float32), mode="global"
    )
    pipe.scorer.register_to_config(threshold_fpr=1.0, threshold_f1=2.0)
    pipe.save_pretrained(folder)
    inspector = inspection.Inspector(folder)
    runs = []
    original = inspector.run
    inspector.run = lambda files: runs.append(len(files)) or original(files)
    page = build_page(inspector)
    resolve_anyio()
    launch(page, "127.0.0.1", free_port(), block=False)
    try:
        yield page, Client(page.local_url, verbose=False), inspector, runs
    finally:
        page.close()
        torch.set_num_threads(threads)


def resolve_anyio():
    """Import what anyio loads lazily, here in the main thread. Under pytest anyio is a plugin whose
    modules pytest compiles itself, and Python 3.11's compiler, run at once in a server thread and
    in this one, failed with "AST constructor recursion depth mismatch" (a full `make test`)."""
    import anyio

    for name in dir(anyio):
        getattr(anyio, name, None)


def inspect(client, paths, folder=""):
    picture, table, message, downloads, slider, *_ = client.predict(
        [handle_file(str(p)) for p in paths], folder, api_name="/inspect"
    )
    return picture, table["data"], message, downloads, slider


def test_serves_on_localhost_and_gives_verdicts_and_maps_at_each_size(served, parts):
    page, client, inspector, runs = served
    assert page.server_name == "127.0.0.1" and page.local_url.startswith("http://127.0.0.1:")
    folder, _ = parts
    paths = [folder / "grey.png", folder / "alpha.png", folder / "deep.png"]
    picture, rows, message, downloads, slider = inspect(client, paths)
    assert [r[0] for r in rows] == ["grey.png", "alpha.png", "deep.png"] and "⚠" not in message
    # The same detection outside the server: each image's noise is seeded by its place in the upload.
    tensors, _, _ = inspector.load([(p.name, p) for p in paths])
    direct = inspector.detector(tensors, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    for row, score in zip(rows, direct.anomaly_scores):
        assert row[1] == pytest.approx(float(score), abs=1e-4)
        assert row[2] == ("defective" if score >= 1.0 else "good")  # the saved fpr threshold
    assert slider["value"] == 1.0
    csv_path, zip_path = sorted(downloads, key=lambda p: p.endswith(".zip"))
    table = list(csv.DictReader(open(csv_path)))
    assert [int(r["is_defective"]) for r in table] == [int(s >= 1.0) for s in direct.anomaly_scores]
    with zipfile.ZipFile(zip_path) as archive:
        for r, expected in zip(table, direct.anomaly_maps):
            png = np.asarray(Image.open(io.BytesIO(archive.read(r["map_png"]))), dtype=np.float64)
            assert png.shape == np.asarray(expected).shape  # (20, 24), (16, 16), (18, 18)
            lo, hi = float(r["map_min"]), float(r["map_max"])
            np.testing.assert_allclose(lo + png / 65535 * (hi - lo), expected, atol=(hi - lo) / 65535 + 1e-6)
    # One row of panels per image.
    assert np.asarray(Image.open(picture)).shape[0] >= 3 * inspection.TILE_SIZE


def test_the_slider_redraws_from_the_kept_maps_without_running_the_model(served, parts):
    _, client, _, runs = served
    folder, _ = parts
    *_, slider = inspect(client, [folder / "grey.png", folder / "deep.png"])
    count = len(runs)
    # The slider spans every score and map maximum: at its ends, everything or nothing is defective.
    picture, table, message, downloads = client.predict(slider["minimum"], api_name="/rethreshold")
    assert len(runs) == count  # no detection
    assert [r[2] for r in table["data"]] == ["defective", "defective"] and "2 of 2" in message
    red = np.asarray(Image.open(picture).convert("RGB"))
    picture, table, message, _ = client.predict(slider["maximum"], api_name="/rethreshold")
    assert [r[2] for r in table["data"]] == ["good", "good"] and "0 of 2" in message
    assert len(runs) == count
    none = np.asarray(Image.open(picture).convert("RGB"))

    def pure_red(panel):  # the region's colour; the overlay blends its colours with the image
        return int(((panel[..., 0] == 255) & (panel[..., 1] == 0) & (panel[..., 2] == 0)).sum())

    assert pure_red(red) > 100 and pure_red(none) == 0


def test_a_bad_upload_gives_a_message_and_the_server_goes_on(served, parts):
    _, client, _, _ = served
    folder, bad = parts
    picture, rows, message, _, _ = inspect(client, [bad / "notes.txt", bad / "cut.png"])
    assert picture is None and not rows
    assert "notes.txt is not an image" in message and "cut.png is truncated or corrupt" in message
    _, rows, message, _, _ = inspect(client, [bad / "notes.txt", folder / "grey.png"])
    assert [r[0] for r in rows] == ["grey.png"] and "notes.txt" in message


def test_a_folder_on_the_server(served, parts, tmp_path):
    _, client, _, _ = served
    folder, _ = parts
    _, rows, _, _, _ = inspect(client, [], str(folder))
    assert [r[0].split("/")[-1] for r in rows] == ["alpha", "deep", "grey"]  # name: folder/stem
    _, rows, message, _, _ = inspect(client, [], str(tmp_path / "missing"))
    assert not rows and "does not exist" in message


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_chromium_shows_the_image_and_the_map(served, parts, tmp_path):
    _, _, inspector, _ = served
    folder, _ = parts
    page = build_page(inspector, str(folder))  # a second page, showing the folder when it opens
    launch(page, "127.0.0.1", free_port(), block=False)
    try:
        shot = tmp_path / "page.png"
        # The page opens with the folder's results in it: no upload, so no script has to click.
        chromium(tmp_path, "--window-size=1200,1600", "--virtual-time-budget=30000",
                 f"--screenshot={shot}", page.local_url, timeout=180)  # fmt: skip
    finally:
        page.close()
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # The region panels' pure red and the overlays' jet blue appear only if the panels were drawn.
    assert ((r > 200) & (g < 40) & (b < 40)).sum() > 100
    assert ((b > 150) & (r < 60) & (g < 100)).sum() > 500
    # Mid greys fill the input and reconstruction tiles (tens of thousands of pixels); the page's
    # own text and borders give far fewer.
    grey = (np.abs(r - g) < 4) & (np.abs(g - b) < 4) & (r > 40) & (r < 200)
    assert grey.sum() > 30000
