"""Named sizes of the autoencoder (AutoencoderKL or VQModel) and the UNet2DModel.

- `tiny`: for tests, 8 to 32 px, under 1 M parameters per model.
- `small`: for CPU work at 128 to 256 px: f = 4, 4 latent channels, UNet widths (64, 128, 128).
- `base`: for GPU work at 256 px: f = 4, 3 latent channels, close to LDM's kl-f4 / vq-f4.

The autoencoders are made with `scaling_factor=1.0`: the UNet-training stage measures the latents'
standard deviation and stores `1 / std` in the VAE's config, as Stable Diffusion's 0.18215 was found.
"""

from diffusers import AutoencoderKL, UNet2DModel, VQModel

from diffad.errors import ConfigError

PRESETS = ("tiny", "small", "base")
MODEL_TYPES = ("kl", "vq")

_AUTOENCODERS = {
    "tiny": dict(
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        mid_block_add_attention=True,
        num_vq_embeddings=64,
    ),
    "small": dict(
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        # Self-attention over a 64 x 64 latent costs more on a CPU than the rest of the model.
        mid_block_add_attention=False,
        num_vq_embeddings=1024,
    ),
    "base": dict(
        block_out_channels=(128, 256, 512),
        layers_per_block=2,
        latent_channels=3,
        norm_num_groups=32,
        mid_block_add_attention=True,
        num_vq_embeddings=8192,
    ),
}

_UNETS = {
    "tiny": dict(
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
    ),
    "small": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=32,
    ),
    "base": dict(
        block_out_channels=(128, 256, 256, 512),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=64,
    ),
}


# UNets for feature latents (a 16x16 or 32x32 grid of 50-200 channels): a CPU trains "small" for a few
# thousand steps in minutes (0.7 M parameters); its output layer starts at zero under a Gaussian prior.
_FEATURE_UNETS = {
    "tiny": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
    "small": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32),
    "base": dict(block_out_channels=(128, 256), layers_per_block=2, norm_num_groups=32),
}


def build_feature_unet(
    preset: str = "small", in_channels: int = 152, sample_size: int = 16, num_class_embeds: int | None = None
) -> UNet2DModel:
    """A freshly initialised UNet2DModel of the preset for feature latents (convolutions only); with
    `num_class_embeds`, class-conditional (UNet2DModel's class embedding, added to the time embedding)."""
    spec = _check(preset, _FEATURE_UNETS)
    depth = len(spec["block_out_channels"])
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownBlock2D",) * depth,
        up_block_types=("UpBlock2D",) * depth,
        num_class_embeds=num_class_embeds,
        **spec,
    )


def _check(preset: str, table: dict) -> dict:
    if preset not in table:
        raise ConfigError(f"unknown model preset {preset!r}: use one of {', '.join(PRESETS)}")
    return dict(table[preset])


def build_autoencoder(preset: str = "small", model_type: str = "kl", in_channels: int = 3):
    """A freshly initialised AutoencoderKL (`model_type="kl"`) or VQModel (`"vq"`) of the preset."""
    spec = _check(preset, _AUTOENCODERS)
    num_blocks = len(spec["block_out_channels"])
    common = dict(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * num_blocks,
        up_block_types=("UpDecoderBlock2D",) * num_blocks,
        block_out_channels=spec["block_out_channels"],
        layers_per_block=spec["layers_per_block"],
        latent_channels=spec["latent_channels"],
        norm_num_groups=spec["norm_num_groups"],
        mid_block_add_attention=spec["mid_block_add_attention"],
        scaling_factor=1.0,
    )
    if model_type == "kl":
        return AutoencoderKL(**common, force_upcast=False)
    if model_type == "vq":
        return VQModel(
            **common, num_vq_embeddings=spec["num_vq_embeddings"], vq_embed_dim=spec["latent_channels"]
        )
    raise ConfigError(f"unknown autoencoder type {model_type!r}: use one of {', '.join(MODEL_TYPES)}")


def build_unet(
    preset: str = "small", in_channels: int = 4, sample_size: int = 32, num_class_embeds: int | None = None
) -> UNet2DModel:
    """A freshly initialised UNet2DModel of the preset that predicts noise of `in_channels` channels
    (class-conditional with `num_class_embeds`)."""
    spec = _check(preset, _UNETS)
    if in_channels < 1 or sample_size < 1:
        raise ConfigError(f"in_channels and sample_size must be positive, got {in_channels}, {sample_size}")
    step = 2 ** (len(spec["block_out_channels"]) - 1)
    if sample_size % step:
        raise ConfigError(
            f"the {preset} UNet halves its input {len(spec['block_out_channels']) - 1} times: "
            f"sample_size must be a multiple of {step}, got {sample_size}"
        )
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        num_class_embeds=num_class_embeds,
        **spec,
    )


def downsample_factor(vae) -> int:
    """How many image pixels one latent pixel covers along each side (f)."""
    if hasattr(vae, "downsample_factor"):  # a feature first stage: its grid sets it
        return int(vae.downsample_factor)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_channels(vae) -> int:
    """Channels of the latents that `vae.encode` returns and the UNet denoises (any first stage)."""
    return int(getattr(vae.config, "vq_embed_dim", None) or vae.config.latent_channels)
