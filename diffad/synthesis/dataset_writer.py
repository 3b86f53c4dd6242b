"""Write a synthetic defect dataset in MVTec AD layout from a folder of good images.

How the good images are used: a seeded hash of (seed, file name) holds back `test_fraction` of them
(at least one when the fraction is above 0). The rest are copied to train/good. The held-back images
are copied to test/good and are the sources of the `num` defects (cycled in name order), so the
detector trained on train/good never sees an image it is tested on. With test_fraction 0 there is
no test/good and the defects are made from the training images (a training set for a segmentation
head, not a test set).

    OUT/train/good/0000.png ...
    OUT/test/good/0000.png ...
    OUT/test/<method>/0000.png ...                (for "mix", <method> is the method drawn for the file)
    OUT/ground_truth/<method>/0000_mask.png ...   (0 or 255)
    OUT/manifest.json                             (settings, and per file: source, method, seed, parameters)

Every file is written under a temporary hidden name and renamed, so none is ever truncated. Each
defect draws from its own seed, derived from the global seed and its index, so an interrupted run
resumed with the same command writes the same bytes as one that was never interrupted. A defect is
done once its record (.synthesis/NNNN.json, the parameters drawn) exists; manifest.json is written
first as "incomplete" (that is how a rerun knows the folder is its own) and last as "complete".
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffad import __version__
from diffad.data.images import image_to_tensor, open_image
from diffad.data.samples import list_images, seeded_holdout
from diffad.errors import ConfigError, DataError, OutputExistsError
from diffad.files import atomic_write_with
from diffad.synthesis.common import choice
from diffad.synthesis.methods import METHOD_CHOICES, mix_choices, synthesize

TOOL = "diffad synthesize"
MANIFEST = "manifest.json"
WORK_DIR = ".synthesis"
OWNED = ("train", "test", "ground_truth", WORK_DIR, MANIFEST)
_ONE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass
class Settings:
    """Everything that decides the bytes written; a rerun resumes only with equal settings."""

    input: str
    method: str
    num: int
    seed: int
    resolution: int | None = None
    test_fraction: float = 0.2
    textures: str | None = None
    model: str | None = None
    foreground: str = "none"
    mask_noise: str = "perlin"
    anomaly_strength: float = 1.0
    num_inference_steps: int = 50
    strength: float = 1.0
    noise: str = "gaussian"
    options: dict = field(default_factory=dict)


def file_seed(seed: int, index: int, purpose: str = "defect") -> int:
    """A 63-bit seed for one file, from the global seed and the file's index (same on every machine)."""
    digest = hashlib.sha256(f"diffad-synthesize:{purpose}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def source_images(folder: str | Path) -> tuple[Path, list[Path]]:
    """The good images: those directly in `folder`, or in its train/good when it is an MVTec category."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--input {folder} is not a folder; give a folder of good images")
    if (folder / "train" / "good").is_dir():
        folder = folder / "train" / "good"
    files = list_images(folder)
    if len(files) < 2:
        raise DataError(
            f"{folder} holds {len(files)} image(s); at least 2 good images are needed "
            "(some for train/good, some for the test set)"
        )
    return folder, files


def plan(settings: Settings) -> list[dict]:
    """Every file to write, in order, with its source and seed; a pure function of the settings."""
    folder, files = source_images(settings.input)
    names = [f.name for f in files]
    fraction = settings.test_fraction
    # Any fraction above 0 holds back at least one image.
    held = seeded_holdout(names, max(fraction, 1 / len(names)), settings.seed) if fraction > 0 else set()
    if len(held) == len(names):
        raise ConfigError(
            f"--test_fraction {settings.test_fraction} leaves no image for train/good; lower it"
        )
    train = [n for n in names if n not in held]
    test = [n for n in names if n in held]
    items = [
        {"file": f"train/good/{i:04d}.png", "source": n, "split": "train", "label": 0}
        for i, n in enumerate(train)
    ]
    items += [
        {"file": f"test/good/{i:04d}.png", "source": n, "split": "test", "label": 0}
        for i, n in enumerate(test)
    ]
    defect_sources = test or train
    has_model = settings.model is not None
    for k in range(settings.num):
        method = settings.method
        if method == "mix":
            picker = torch.Generator().manual_seed(file_seed(settings.seed, k, "method"))
            method = choice(picker, mix_choices(has_model))
        items.append(
            {
                "file": f"test/{method}/{k:04d}.png",
                "mask": f"ground_truth/{method}/{k:04d}_mask.png",
                "source": defect_sources[k % len(defect_sources)],
                "split": "test",
                "label": 1,
                "method": method,
                "seed": file_seed(settings.seed, k),
                "index": k,
            }
        )
    return items


def write_png(array: np.ndarray, path: Path) -> None:
    """uint8 (H, W) or (H, W, 3) as PNG, atomically. PIL writes no timestamp: same pixels, same bytes."""
    atomic_write_with(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def write_json(data, path: Path) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write_with(path, lambda tmp: tmp.write_text(text))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    array = ((image.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def read_source(path: Path, resolution: int | None) -> torch.Tensor:
    img = open_image(path)
    channels = 1 if img.mode in _ONE_CHANNEL_MODES else 3
    return image_to_tensor(img, channels, resolution)


def prepare_output(output_dir: Path, settings: Settings, overwrite: bool) -> None:
    """Create OUT, resume our own unfinished run, or refuse a folder that is someone else's."""
    manifest_path = output_dir / MANIFEST
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"--output_dir {output_dir} is a file; give a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        ours = None
        if manifest_path.is_file():
            try:
                ours = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                ours = None
        if overwrite:
            # Only what this command writes is removed; anything else in the folder stays.
            for name in OWNED:
                target = output_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        elif not (isinstance(ours, dict) and ours.get("tool") == TOOL):
            raise OutputExistsError(
                f"{output_dir} is not empty and was not made by `{TOOL}`; "
                "choose a new --output_dir or pass --overwrite"
            )
        elif ours.get("settings") != asdict(settings):
            raise OutputExistsError(
                f"{output_dir} was made by `{TOOL}` with other settings; rerun with the "
                "same settings to resume it, or pass --overwrite to replace it"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():
        write_json(
            {"tool": TOOL, "version": __version__, "status": "incomplete", "settings": asdict(settings)},
            manifest_path,
        )
    # Temporary files left by a killed run: hidden, never read, removed here.
    for tmp in output_dir.rglob(".*.tmp-*"):
        tmp.unlink()


def _load_model(settings: Settings, device: str):
    from diffad.pipelines.pipeline_anomaly_synthesis import AnomalySynthesisPipeline

    pipe = AnomalySynthesisPipeline.from_model_folder(settings.model)
    pipe.to(device)
    return {"unet": pipe.unet, "scheduler": pipe.scheduler, "vae": pipe.vae}


def synthesize_dataset(
    settings: Settings,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Write (or finish writing) the dataset; returns the manifest."""
    if settings.method not in METHOD_CHOICES:
        raise ConfigError(f"unknown --method {settings.method!r}; choose from {', '.join(METHOD_CHOICES)}")
    if settings.num < 1:
        raise ConfigError(f"--num must be at least 1, not {settings.num}")
    if settings.method == "diffusion" and settings.model is None:
        raise ConfigError("--method diffusion needs --model DIR (a trained pipeline folder)")
    output_dir = Path(output_dir)
    folder, _ = source_images(settings.input)
    items = plan(settings)
    prepare_output(output_dir, settings, overwrite)
    manifest_path = output_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("status") == "complete":
        shutil.rmtree(output_dir / WORK_DIR, ignore_errors=True)  # killed after the manifest, before this
        return manifest

    textures = None
    if settings.textures is not None:
        from diffad.synthesis.textures import TextureBank

        textures = TextureBank(settings.textures)
    model = None
    kwargs = {"foreground": settings.foreground, "mask_noise": settings.mask_noise, **settings.options}
    from tqdm.auto import tqdm

    for item in tqdm(items, desc="synthesize", unit="file", disable=not progress):
        target = output_dir / item["file"]
        if "mask" not in item:
            if not target.is_file():
                write_png(to_uint8(read_source(folder / item["source"], settings.resolution)), target)
            continue
        record_path = output_dir / WORK_DIR / f"{item['index']:04d}.json"
        if record_path.is_file():
            continue
        method_kwargs = dict(kwargs)
        if item["method"] == "draem" and textures is not None:
            method_kwargs["textures"] = textures
        if item["method"] == "diffusion":
            if model is None:
                model = _load_model(settings, device)
            method_kwargs.update(
                model,
                anomaly_strength=settings.anomaly_strength,
                num_inference_steps=settings.num_inference_steps,
                strength=settings.strength,
                noise=settings.noise,
            )
        image = read_source(folder / item["source"], settings.resolution)
        generator = torch.Generator().manual_seed(item["seed"])
        result = synthesize(image, item["method"], generator, **method_kwargs)
        write_png(to_uint8(result.image), target)
        write_png((result.mask[0].cpu().numpy() > 0).astype(np.uint8) * 255, output_dir / item["mask"])
        write_json(result.params, record_path)

    files = []
    for item in items:
        entry = {k: v for k, v in item.items() if k != "index"}
        if "mask" in item:
            entry["params"] = json.loads((output_dir / WORK_DIR / f"{item['index']:04d}.json").read_text())
        files.append(entry)
    manifest = {
        "tool": TOOL,
        "version": __version__,
        "status": "complete",
        "settings": asdict(settings),
        "source_folder": str(folder),
        "counts": _counts(items),
        "files": files,
    }
    write_json(manifest, manifest_path)
    shutil.rmtree(output_dir / WORK_DIR, ignore_errors=True)
    return manifest


def _counts(items: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for item in items:
        key = "/".join(item["file"].split("/")[:2])
        counts[key] = counts.get(key, 0) + 1
    return counts
