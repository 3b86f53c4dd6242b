"""An exponential moving average of a model's weights (diffusers' EMAModel), kept in checkpoints.

The EMA is saved with `save_pretrained` (safetensors plus its step count in config.json) into
`<checkpoint>/ema`, not through accelerate's pickled custom-state files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from diffad.errors import ConfigError

EMA_FOLDER = "ema"


def make_ema(model: torch.nn.Module, decay: float) -> EMAModel:
    ema = EMAModel(
        model.parameters(), decay=decay, model_cls=type(model), model_config=model.config, foreach=False
    )
    ema.to(next(model.parameters()).device)
    return ema


def save_ema(ema: EMAModel | None, checkpoint_dir: str | Path) -> None:
    if ema is not None:
        ema.save_pretrained(str(Path(checkpoint_dir) / EMA_FOLDER))


def load_ema(ema: EMAModel | None, checkpoint_dir: str | Path, device: torch.device) -> None:
    """Restore the EMA weights and step count saved in `checkpoint_dir` (no-op without an EMA)."""
    if ema is None:
        return
    folder = Path(checkpoint_dir) / EMA_FOLDER
    if not folder.is_dir():
        raise ConfigError(
            f"{checkpoint_dir} holds no EMA weights (no {EMA_FOLDER}/); resume without --use_ema, "
            "or start afresh with --overwrite_output_dir."
        )
    loaded = EMAModel.from_pretrained(str(folder), ema.model_cls)
    ema.load_state_dict(loaded.state_dict())
    ema.to(device)


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: EMAModel | None):
    """Swap the EMA weights into `model` for the duration (validation, the final save)."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())
