"""The output folder of a training run: who may write there, checkpoint-N folders, the final model.

Everything is written under a temporary name and renamed into place, so a crash (or SIGKILL)
never leaves a folder that resume or `from_pretrained` would take for complete:
- a checkpoint is built in `.checkpoint-N.tmp` and renamed to `checkpoint-N` once `state.json`
  (written last) is in it; only `checkpoint-N` folders holding `state.json` are ever resumed;
- the final model is built in `.final.tmp`; its marker (`config.json` for one model,
  `model_index.json` for a pipeline) is removed before the other files move in and renamed last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from diffad.errors import ConfigError, OutputExistsError
from diffad.files import atomic_write

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "state.json"
FINAL_TMP = ".final.tmp"
ARGS_FILE = "training_args.json"
FIT_AUTOENCODER_DIR = "autoencoder"  # where `diffad fit` runs stage 1, inside the pipeline folder
FIT_SUMMARY = "fit_summary.json"
FIT_HEAD_DIR = "segmentation_training"  # where `diffad fit --with_head` runs the head stage
# What a training run itself writes into its output folder, besides the final model.
RUN_ENTRIES = {"samples", "logs", ARGS_FILE, FINAL_TMP, FIT_AUTOENCODER_DIR, FIT_HEAD_DIR, FIT_SUMMARY}


def _is_run_entry(name: str, model_entries: Iterable[str]) -> bool:
    return (
        name in RUN_ENTRIES
        or name in set(model_entries)
        or CHECKPOINT_RE.match(name) is not None
        or (name.startswith(".checkpoint-") and name.endswith(".tmp"))
    )


def check_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite: bool,
    resume: str | None,
    model_entries: Iterable[str],
) -> None:
    """Refuse an `output_dir` this run may not write into. Reads only, so every rank can run it.

    A folder with anything in it is refused unless the run resumes and the folder holds only what a
    training run writes (checkpoints, samples, logs, the model's files), or `overwrite` is given.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--output_dir {out} is a file; give a folder path.")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present or overwrite:
        return
    model_entries = list(model_entries)
    foreign = [n for n in present if not _is_run_entry(n, model_entries)]
    if resume and not foreign:
        return
    listed = foreign or present
    shown = ", ".join(listed[:5]) + (" ..." if len(listed) > 5 else "")
    hint = (
        "choose an empty or new folder, or "
        if foreign
        else "pass --resume_from_checkpoint latest to continue that run, or "
    )
    raise OutputExistsError(
        f"--output_dir {out} already holds files ({shown}); {hint}pass --overwrite_output_dir to write over them."
    )


def prepare_output_dir(output_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """Create `output_dir` (main process only, after `check_output_dir` passed on every rank).

    Overwriting drops the old checkpoints so that `latest` cannot pick up another run's state.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in out.iterdir():
            if CHECKPOINT_RE.match(p.name) or p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
    return out


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# checkpoint-N folders


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir`, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_checkpoint_step(path: str | os.PathLike) -> int:
    state = Path(path) / STATE_FILE
    if not state.is_file():
        raise ConfigError(
            f"{path} is not a complete checkpoint (no {STATE_FILE}); give a checkpoint-N folder of a "
            "diffad training run, or 'latest'."
        )
    return int(json.loads(state.read_text())["step"])


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from: None to start afresh ('latest' with no checkpoint)."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(
            f"--resume_from_checkpoint {resume}: no such folder; give a checkpoint-N folder or 'latest'."
        )
    read_checkpoint_step(path)
    return path


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    *,
    total_limit: int | None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write `checkpoint-<step>` (accelerator state, then `extra(folder)` on the main process).

    Every rank must call this (accelerate gathers state collectively); only the main process renames
    and prunes.
    """
    out = Path(output_dir)
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if extra is not None:
            extra(tmp)
        write_json_atomic(tmp / STATE_FILE, {"step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(out, total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `total_limit` (None or <1 keeps all)."""
    if not total_limit or total_limit < 1:
        return []
    found = list_checkpoints(output_dir)
    removed = [p for _, p in found[: max(0, len(found) - total_limit)]]
    for p in removed:
        shutil.rmtree(p)
    return removed


# ---------------------------------------------------------------------------------------------
# the final model


def write_final_atomic(output_dir: str | os.PathLike, writer: Callable[[Path], None], marker: str) -> None:
    """Run `writer(tmp_folder)` (e.g. a save_pretrained), then move what it wrote into `output_dir`.

    `marker` is the file whose presence makes a folder loadable (config.json / model_index.json):
    it is removed from `output_dir` before anything moves, and moved in last.
    """
    out = Path(output_dir)
    tmp = out / FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer(tmp)
    if not (tmp / marker).is_file():
        raise RuntimeError(f"the model writer did not write {marker}")
    (out / marker).unlink(missing_ok=True)
    for entry in sorted(tmp.iterdir()):
        if entry.name == marker:
            continue
        dest = out / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(entry, dest)
    os.replace(tmp / marker, out / marker)
    tmp.rmdir()
