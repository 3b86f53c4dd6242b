"""Data order and random draws as pure functions of (seed, micro-batch index).

A resumed run must draw exactly what an uninterrupted one would have drawn, and N processes must
together draw what one process with the same global batch draws. Carrying RNG state across a
checkpoint gets neither right, so every draw here is derived afresh from the seed and the global
micro-batch index, and each rank takes its rows out of the global batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that depends on `seed` and every part, stable across runs and machines."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator_for(seed: int, *parts: object) -> torch.Generator:
    """A CPU generator for one purpose (`parts`, e.g. ("noise", 17)); draw on the CPU, then move."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


class BatchOrder:
    """The stream of sample indices: a fresh permutation of the training set every epoch.

    Global micro-batch `m` takes positions [m*G, (m+1)*G) of the stream (G = local batch x world
    size); rank `r` takes its `local_batch` rows starting at r*local_batch. A batch may run over an
    epoch boundary; a set smaller than one batch simply repeats.
    """

    def __init__(self, num_samples: int, local_batch: int, *, seed: int, rank: int = 0, world_size: int = 1):
        if num_samples < 1:
            raise ValueError("BatchOrder needs at least one sample")
        self.num_samples = num_samples
        self.local_batch = local_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._perms: dict[int, list[int]] = {}

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world_size

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 4:  # only neighbouring epochs are ever needed
                self._perms.pop(min(self._perms))
            gen = generator_for(self.seed, "order", epoch)
            self._perms[epoch] = torch.randperm(self.num_samples, generator=gen).tolist()
        return self._perms[epoch]

    def indices(self, micro_batch: int) -> list[int]:
        """This rank's sample indices for global micro-batch `micro_batch`."""
        start = micro_batch * self.global_batch + self.rank * self.local_batch
        out = []
        for pos in range(start, start + self.local_batch):
            epoch, within = divmod(pos, self.num_samples)
            out.append(self._permutation(epoch)[within])
        return out

    def batches(self, first: int, stop: int) -> Iterator[list[int]]:
        """Index lists for micro-batches first..stop-1: a `batch_sampler` for a DataLoader."""
        for m in range(first, stop):
            yield self.indices(m)


class MicroBatchSampler:
    """A DataLoader batch_sampler over micro-batches [first, stop) of a BatchOrder."""

    def __init__(self, order: BatchOrder, first: int, stop: int):
        self.order, self.first, self.stop = order, first, stop

    def __iter__(self) -> Iterator[list[int]]:
        return self.order.batches(self.first, self.stop)

    def __len__(self) -> int:
        return max(0, self.stop - self.first)


def rank_rows(
    draw: Callable[[tuple[int, ...], torch.Generator], torch.Tensor],
    local_shape: tuple[int, ...],
    generator: torch.Generator,
    *,
    rank: int,
    world_size: int,
) -> torch.Tensor:
    """Draw for the whole global batch, keep this rank's rows, so any world size draws the same."""
    b = local_shape[0]
    full = draw((b * world_size, *local_shape[1:]), generator)
    return full[rank * b : (rank + 1) * b]


def global_randn(
    local_shape: tuple[int, ...], generator: torch.Generator, *, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    return rank_rows(
        lambda shape, g: torch.randn(shape, generator=g),
        local_shape,
        generator,
        rank=rank,
        world_size=world_size,
    )


def global_randint(
    high: int, batch: int, generator: torch.Generator, *, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    return rank_rows(
        lambda shape, g: torch.randint(0, high, shape, generator=g),
        (batch,),
        generator,
        rank=rank,
        world_size=world_size,
    )


def random_hflip(images: torch.Tensor, generator: torch.Generator, *, rank: int = 0, world_size: int = 1):
    """Flip each image left-right with probability 1/2, the coin drawn for the global batch."""
    flip = rank_rows(
        lambda shape, g: torch.rand(shape, generator=g) < 0.5,
        (images.shape[0],),
        generator,
        rank=rank,
        world_size=world_size,
    ).to(images.device)
    return torch.where(flip.view(-1, *([1] * (images.dim() - 1))), images.flip(-1), images)


def random_crops(
    images: torch.Tensor, size: int, generator: torch.Generator, *, rank: int = 0, world_size: int = 1
):
    """A size x size window of each image, its corner drawn for the global batch."""
    n, _, h, w = images.shape
    ys = global_randint(h - size + 1, n, generator, rank=rank, world_size=world_size).tolist()
    xs = global_randint(w - size + 1, n, generator, rank=rank, world_size=world_size).tolist()
    return torch.stack([img[:, y : y + size, x : x + size] for img, y, x in zip(images, ys, xs)])
