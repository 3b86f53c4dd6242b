"""Loading any detector folder that `diffad fit` writes, on a device the user names.

A folder is a saved `AnomalyDetectionPipeline` (model_index.json) or a reference detector of
`diffad.baselines` (detector_config.json naming its class). `diffad detect`, `diffad evaluate` and
Python (`diffad.load_detector(DIR)`) all load through `load_detector`, so a folder one of them takes
the others take too.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffad.errors import ConfigError

DEVICE_HINT = "use cpu, cuda, cuda:N or mps, or leave --device out (cuda when available, else cpu)"


def resolve_device(device: str | None):
    """`device` as a torch.device that exists here (default: this process's GPU under a multi-GPU
    `accelerate launch`, else cuda if available, else cpu)."""
    import torch

    if device is None:
        from diffad.distributed import process_state

        state = process_state()
        # Not accelerate's "cpu:0" on CPUs: some kernels round differently there, and a shard's
        # maps would not equal one process's.
        if state.num_processes > 1 and state.device.type != "cpu":
            return state.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"--device {device!r} is not a torch device; {DEVICE_HINT}") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"--device {device}: this machine has no CUDA GPU torch can use; use --device cpu"
            )
        if chosen.index is not None and chosen.index >= count:
            raise ConfigError(f"--device {device}: there are {count} CUDA GPUs (cuda:0 to cuda:{count - 1})")
    elif chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {device}: diffad runs on cpu, cuda or mps; {DEVICE_HINT}")
    return chosen


def check_pipeline_source(path) -> None:
    """Before `AnomalyDetectionPipeline.from_pretrained(path)`: a local pipeline folder must be whole,
    and a reference detector's folder is pointed to `load_detector`."""
    folder = Path(path)
    if (folder / "model_index.json").is_file():
        check_pipeline_folder(folder)
    elif (folder / "detector_config.json").is_file():
        raise ConfigError(
            f"{folder} holds a reference detector (PaDiM or PatchCore), not a pipeline: load it with "
            f"diffad.load_detector({str(folder)!r}), which loads every folder diffad fit writes"
        )


def check_pipeline_folder(folder: str | os.PathLike) -> None:
    """Every component model_index.json names has its subfolder: diffusers' own message for a missing
    one ("no file named config.json found in directory ...") says neither which nor what to do."""
    folder = Path(folder)
    index_file = folder / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {index_file} ({err}); save the pipeline again") from None
    if not isinstance(index, dict):
        raise ConfigError(f"{index_file} is not a JSON object; save the pipeline again")
    missing = [
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value[0] is not None
        if not (folder / name).is_dir()
    ]
    if missing:
        listed = ", ".join(f"{name}/ ({index[name][1]})" for name in missing)
        raise ConfigError(
            f"{folder} lacks {listed}, which its model_index.json lists: the folder is incomplete; copy "
            "the whole folder again (every subfolder), or fit it again with diffad fit"
        )


def _load_pipeline(folder: Path):
    from diffad.pipelines.pipeline_anomaly_detection import AnomalyDetectionPipeline

    check_pipeline_folder(folder)
    try:
        pipe = AnomalyDetectionPipeline.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the pipeline in {folder}: {err}") from err
    pipe.set_progress_bar_config(disable=True)  # the commands show their own progress over images
    return pipe


def _load_baseline(folder: Path):
    import diffad.baselines

    config_file = folder / "detector_config.json"
    try:
        name = json.loads(config_file.read_text()).get("class")
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"cannot read {config_file}: {err}; refit the detector") from err
    cls = getattr(diffad.baselines, name, None) if isinstance(name, str) else None
    if not (inspect.isclass(cls) and hasattr(cls, "from_pretrained")):
        known = [
            n for n in diffad.baselines.__all__ if hasattr(getattr(diffad.baselines, n), "from_pretrained")
        ]
        raise ConfigError(
            f"{config_file} names class {name!r}, which is not one of diffad.baselines' {known}"
        )
    return cls.from_pretrained(folder)


# The file that marks each kind of saved detector, and how to load it. Add a kind here.
LOADERS: dict[str, Callable[[Path], Any]] = {
    "model_index.json": _load_pipeline,
    "detector_config.json": _load_baseline,
}


def detector_marker(model_dir: str | os.PathLike) -> str:
    """Which kind of detector folder `model_dir` is (its marker file in LOADERS), without loading it."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ConfigError(f"model folder {folder} does not exist; pass --model a saved pipeline or detector")
    for marker in LOADERS:
        if (folder / marker).is_file():
            return marker
    separate = sorted(p.name for p in folder.iterdir() if holds_detector(p))
    if separate:
        raise ConfigError(
            f"{folder} holds one model per category ({', '.join(separate)}): pass --category NAME, or "
            f"--model {folder / separate[0]}"
        )
    raise ConfigError(
        f"{folder} holds none of {', '.join(LOADERS)}: pass a folder written by diffad fit, "
        "AnomalyDetectionPipeline.save_pretrained or a baseline's save_pretrained"
    )


def model_for_category(model_dir: str | os.PathLike, category: str | None) -> Path:
    """`model_dir/<category>` when it holds a saved detector (`diffad fit --separate`: one model per
    category), else `model_dir` (one model, of that category or of many)."""
    model_dir = Path(model_dir)
    if category is None:
        return model_dir
    sub = model_dir / category
    return sub if holds_detector(sub) else model_dir


def holds_detector(folder: Path) -> bool:
    """Whether `folder` is a saved detector (holds one of LOADERS' marker files)."""
    return folder.is_dir() and any((folder / marker).is_file() for marker in LOADERS)


def detector_categories(detector) -> list[str]:
    """The categories a detector tells apart: a pipeline's of several categories; [] for a model of one
    (it needs none, and detects other sets too) or a detector that does not."""
    names = list(getattr(detector, "categories", None) or [])
    return names if len(names) > 1 else []


def category_scope(detector, category: str | None):
    """A context in which `detector` works as `category` (a pipeline of several categories: its own
    statistics, weights and thresholds; an unknown name is a ConfigError listing the known ones). A
    detector that does not tell categories apart (a reference detector, an older pipeline) ignores it."""
    from contextlib import nullcontext

    if category is None or not detector_categories(detector) or not hasattr(detector, "use_category"):
        return nullcontext(detector)
    return detector.use_category(category)


def category_options(detector, category: str | None) -> dict[str, Any]:
    """The keyword arguments that tell a detector call the images' category (none when it takes none)."""
    from diffad.scoring.scorer import resolve_category

    if category is None or not detector_categories(detector):
        return {}
    # An unknown category fails here, before any image runs.
    return {"category": resolve_category(detector_categories(detector), category)}


def load_detector(model_dir: str | os.PathLike, device: str | None = None):
    """The detector saved in `model_dir` (any folder `diffad fit` writes), on `device` (default: cuda
    if available, else cpu). Call it as `detector(images, output_type="np")`; see `diffad.report.evaluate`."""
    marker = detector_marker(model_dir)
    target = resolve_device(device)  # before the loading, which takes seconds
    return LOADERS[marker](Path(model_dir)).to(target)
