"""Presets and losses around diffusers' AutoencoderKL, VQModel and UNet2DModel, and the networks diffad adds."""

from diffad.models.efficientnet import EfficientNetLiteFeatures as EfficientNetLiteFeatures
from diffad.models.feature_encoder import FeatureEncoder
from diffad.models.losses import PatchDiscriminator
from diffad.models.presets import (
    MODEL_TYPES,
    PRESETS,
    build_autoencoder,
    build_feature_unet,
    build_unet,
    downsample_factor,
    latent_channels,
)

# Imported here so that diffusers can reload a pipeline's `segmentation_head` (it loads only imported modules).
from diffad.models.segmentation import SegmentationHead, build_segmentation_head

__all__ = [
    "FeatureEncoder",
    "build_feature_unet",
    "SegmentationHead",
    "build_segmentation_head",
    "PatchDiscriminator",
    "MODEL_TYPES",
    "PRESETS",
    "build_autoencoder",
    "build_unet",
    "downsample_factor",
    "latent_channels",
]
