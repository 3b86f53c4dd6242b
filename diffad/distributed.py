"""Sharding a run over the processes of `accelerate launch` (gloo on CPUs, NCCL on GPUs).

Without `accelerate launch` there is one process and each helper is the identity. Shards are
contiguous and unpadded (`PartialState.split_between_processes`), so no image is run twice.
"""

from __future__ import annotations

import os
from typing import Any


def cpu_only_launch() -> bool:
    """torchrun on a machine without an accelerator: accelerate needs `cpu=True` to pick gloo DDP."""
    import torch

    has_accelerator = (
        torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    )
    return "LOCAL_RANK" in os.environ and not has_accelerator


def process_state():
    """accelerate's PartialState: the process group `accelerate launch` set up, or one process."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only_launch())


def shard(items: list, state) -> list:
    """This process's contiguous share of `items` (all of them in a single process)."""
    with state.split_between_processes(list(items)) as mine:
        return list(mine)


def gather(item: Any, state) -> list:
    """Every process's `item`, in process order, on every process (`accelerate.utils.gather_object`)."""
    if state.num_processes == 1:
        return [item]
    from accelerate.utils import gather_object

    return gather_object([item])
