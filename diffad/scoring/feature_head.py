"""The "feature_head" residual: a small network on pretrained features, trained on synthetic defects.

The feature Gaussians (`feature_gaussian.py`) measure how far each position lies from normal in every
direction alike. On random texture a defect can move the features no further than good variation does
(DAGM class 1: image AUROC 0.93 at best). A network trained to tell the generator's synthetic defects
("mix": DRAEM textures, smooth and flat fills, CutPaste, scratches, spots, cracks) from good images
learns which directions matter. It reads the Gaussians' pooled embedding, standardised per position by
its statistics on good images, and gives a defect probability per position: two layers of 1x1 and
3x3 convolutions, a few thousand steps on the CPU. It is trained inside `calibrate`, on the same good
training images as the Gaussians, never on test images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffad.errors import ConfigError

SYNTHESIS_METHOD = "mix"
MASK_THRESHOLD = 0.3  # a grid cell is a defect when this share of it is covered
STD_FLOOR = 1e-3


def make_head(channels: int, hidden: int) -> nn.Sequential:
    """(N, channels, h, w) standardised embedding -> (N, 1, h, w) defect logits."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden // 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden // 2, 1, 1),
    )


def position_statistics(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean and standard deviation (D, h, w) of good images' embeddings (N, D, h, w)."""
    if len(embeddings) < 2:
        raise ConfigError(f"the feature head needs at least 2 good images, got {len(embeddings)}")
    e = embeddings.double()
    return e.mean(0).float(), (e.std(0) + STD_FLOOR).float()


def defect_targets(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) in {0, 1}: the grid cells that masks (N, H, W) cover by MASK_THRESHOLD or more."""
    return (F.adaptive_avg_pool2d(masks.float()[:, None], grid) >= MASK_THRESHOLD).float()


def train_head(
    head: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    learning_rate: float = 1e-3,
    progress=None,
) -> float:
    """Fit `head` to (standardised inputs, targets) with binary cross-entropy; returns the last loss.

    Batches are drawn with `generator` and the weights start from it, so a seed gives the same head."""
    for p in head.parameters():  # seeded initialisation, independent of the global RNG
        if p.dim() > 1:
            nn.init.kaiming_normal_(p, nonlinearity="relu", generator=generator)
        else:
            nn.init.zeros_(p)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, weight_decay=1e-5)
    head.train()
    loss = torch.zeros(())
    for _ in range(steps):
        index = torch.randint(len(inputs), (batch_size,), generator=generator)
        loss = F.binary_cross_entropy_with_logits(head(inputs[index].float()), targets[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress.update(1)
    head.eval()
    return float(loss.detach())


def head_map(head: nn.Module, embedding: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, h, w) defect probability of each position of `embedding` (N, D, h, w)."""
    if embedding.shape[1:] != mean.shape:
        raise ConfigError(
            f"the scorer's feature head was trained on embeddings of shape {tuple(mean.shape)} but the "
            f"features have {tuple(embedding.shape[1:])}: calibrate the pipeline again with this extractor "
            "and resolution"
        )
    z = (embedding.float() - mean.to(embedding.device, torch.float32)) / std.to(
        embedding.device, torch.float32
    )
    param = next(head.parameters())
    return torch.sigmoid(head(z.to(param.dtype)).float())[:, 0]
