"""`SegmentationHead`: a small encoder-decoder that reads an image beside its reconstruction and says
where the defects are (DRAEM's discriminative network, made compact).

Residual maps between reconstruction and image light up wherever the texture is not reproduced
exactly, defect or not. A network trained on synthetic defects learns which differences matter.
The head computes the residual maps it is configured to read (pixel L1, 1 - SSIM) from the two
images itself, so it needs nothing from the pipeline but the image and its reconstruction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from diffad.errors import ConfigError

HEAD_RESIDUALS = ("pixel", "ssim")
HEAD_PRESETS = {
    "tiny": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
    "small": dict(block_out_channels=(16, 32, 64, 128), layers_per_block=2, norm_num_groups=8),
    "base": dict(block_out_channels=(32, 64, 128, 256), layers_per_block=2, norm_num_groups=8),
}


def _block(in_ch: int, out_ch: int, layers: int, groups: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    for i in range(layers):
        modules += [
            nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1),
            nn.GroupNorm(min(groups, out_ch), out_ch),
            nn.SiLU(),
        ]
    return nn.Sequential(*modules)


class SegmentationHead(ModelMixin, ConfigMixin):
    """Defect logits (N, 1, H, W) from an image and its reconstruction, both (N, C, H, W) in [-1, 1].

    Args:
        image_channels: C, the channels of image and reconstruction.
        residual_inputs: residual maps computed from the pair and given as extra input channels, any of
            "pixel" (mean |x - x̂|) and "ssim" (1 - SSIM); the input has 2*C + len(residual_inputs) channels.
        block_out_channels: channels per resolution level; each level after the first halves the size.
        layers_per_block: 3x3 conv + GroupNorm + SiLU layers per level, in the encoder and the decoder.
        full_resolution_layers: the same at the first (full-resolution) level, where a layer costs
            the most: one keeps the head under a fifth of the detection time.
        norm_num_groups: GroupNorm groups (capped at the channel count); batch-independent, so a
            single image is scored as in a batch.
        input_stride: 1 reads the images at full size; 2 average-pools the input by 2 first and
            upsamples the logits back (bilinear), about four times cheaper, for coarse defects.
        prior_probability: the initial defect probability everywhere (the output bias), as in RetinaNet:
            most pixels are good, and starting there keeps the first steps of focal loss stable.
        residual_weight: weight of the pipeline's calibrated residual map when it is fused with the
            head's logits (`anomaly_map`); 0 uses the head alone.
    """

    @register_to_config
    def __init__(
        self,
        image_channels: int = 3,
        residual_inputs: tuple[str, ...] = ("pixel",),
        block_out_channels: tuple[int, ...] = (16, 32, 64, 128),
        layers_per_block: int = 2,
        full_resolution_layers: int = 1,
        norm_num_groups: int = 8,
        input_stride: int = 1,
        prior_probability: float = 0.05,
        residual_weight: float = 0.0,
    ):
        super().__init__()
        unknown = [r for r in residual_inputs if r not in HEAD_RESIDUALS]
        if unknown:
            raise ConfigError(
                f"unknown residual input(s) {unknown} for the segmentation head; choose from {HEAD_RESIDUALS}"
            )
        if image_channels < 1 or not block_out_channels or min(layers_per_block, full_resolution_layers) < 1:
            raise ConfigError(
                "the segmentation head needs image_channels >= 1, at least one level, and "
                "layers_per_block and full_resolution_layers >= 1"
            )
        if input_stride not in (1, 2):
            raise ConfigError(f"input_stride must be 1 or 2, not {input_stride}")
        if not 0.0 < prior_probability < 1.0 or residual_weight < 0:
            raise ConfigError("prior_probability must lie in (0, 1) and residual_weight must be >= 0")
        channels = list(block_out_channels)
        self.down = nn.ModuleList()
        previous = self.in_channels
        layers = [full_resolution_layers] + [layers_per_block] * (len(channels) - 1)
        for ch, n in zip(channels, layers):
            self.down.append(_block(previous, ch, n, norm_num_groups))
            previous = ch
        self.up = nn.ModuleList()
        for skip, n in zip(reversed(channels[:-1]), reversed(layers[:-1])):
            self.up.append(_block(previous + skip, skip, n, norm_num_groups))
            previous = skip
        self.out = nn.Conv2d(previous, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, float(torch.logit(torch.tensor(prior_probability))))

    @property
    def in_channels(self) -> int:
        return 2 * int(self.config.image_channels) + len(self.config.residual_inputs)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def inputs(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """The network's input: image, reconstruction and the configured residual maps, stacked."""
        from diffad.scoring.residuals import pixel_residual, ssim_residual

        c = int(self.config.image_channels)
        if image.dim() != 4 or image.shape[1] != c or image.shape != reconstruction.shape:
            raise ConfigError(
                f"the segmentation head takes image and reconstruction of equal shape (N, {c}, H, W); got "
                f"{tuple(image.shape)} and {tuple(reconstruction.shape)}"
            )
        parts = [image, reconstruction]
        for name in self.config.residual_inputs:
            if name == "pixel":
                parts.append(pixel_residual(image, reconstruction)[:, None])
            else:
                parts.append(ssim_residual(image.float(), reconstruction.float())[:, None].to(image.dtype))
        return torch.cat(parts, dim=1)

    def forward(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Defect logits (N, 1, H, W) at the input's size (padded internally to a multiple of 2^levels)."""
        x = self.inputs(image, reconstruction).to(self.out.weight.dtype)
        size = x.shape[-2:]
        if self.config.input_stride > 1:
            x = F.avg_pool2d(x, self.config.input_stride, ceil_mode=True)
        h, w = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.out(x)[..., :h, :w]
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    @torch.no_grad()
    def predict(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Defect probabilities (N, 1, H, W) in [0, 1]."""
        return torch.sigmoid(self(image, reconstruction))

    @torch.no_grad()
    def anomaly_map(
        self, image: torch.Tensor, reconstruction: torch.Tensor, residual_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The detection map (N, H, W): the head's logits, plus `residual_weight` times the pipeline's
        calibrated residual map (N, H, W) when given.

        Logits rather than probabilities: a sigmoid saturates at 1.0 in float32 for logits above ~17,
        which would tie the strongest defects and blunt image scores (the maximum of the map).
        """
        logits = self(image, reconstruction)[:, 0].float()
        weight = float(self.config.residual_weight)
        if residual_map is None or weight == 0:
            return logits
        return logits + weight * residual_map.to(logits)


def build_segmentation_head(
    preset: str = "small",
    image_channels: int = 3,
    residual_inputs: tuple[str, ...] = ("pixel",),
    residual_weight: float = 0.0,
    input_stride: int = 1,
) -> SegmentationHead:
    """A head of one size: "tiny" (tests, ~5 k parameters), "small" (~0.5 M), "base" (~2 M)."""
    if preset not in HEAD_PRESETS:
        raise ConfigError(
            f"unknown segmentation head preset {preset!r}; choose from {', '.join(HEAD_PRESETS)}"
        )
    return SegmentationHead(
        image_channels=image_channels,
        residual_inputs=tuple(residual_inputs),
        residual_weight=residual_weight,
        input_stride=input_stride,
        **HEAD_PRESETS[preset],
    )
