"""Presets and losses around diffusers' AutoencoderKL, VQModel and UNet2DModel, and the networks diffad adds."""
