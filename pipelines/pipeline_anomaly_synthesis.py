"""AnomalySynthesisPipeline: put synthetic defects on good images, and say where they are.

image ──method (draem | smooth | cutpaste | cutpaste_scar | scratch | spots | crack | diffusion | mix)──▶
(defective image, 0/1 mask); pixels outside the mask are the input's, unchanged.

Only "diffusion" (RealNet-style inpainting with a controllable anomaly strength) needs the model
components; without them the pipeline still makes every other kind of defect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from diffad.data.images import image_to_tensor, open_image
from diffad.errors import ConfigError
from diffad.synthesis.common import as_generator
from diffad.synthesis.methods import METHOD_CHOICES, synthesize

_ONE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass
class AnomalySynthesisOutput(BaseOutput):
    """
    Args:
        images: the defective images in [0, 1]. "np": (N, H, W, C) float32, "pt": (N, C, H, W),
            "pil": list of "L"/"RGB" images; a list when the inputs differ in size.
        masks: where each defect is, 0/1. "np": (N, H, W) float32, "pt": (N, 1, H, W), "pil": list of
            "L" images with 255 on the defect.
        params: per image, what was drawn (method, mask scale and angle, fill, opacity, ...); not part
            of the tuple form.
    """

    images: np.ndarray | torch.Tensor | list
    masks: np.ndarray | torch.Tensor | list
    params: list[dict] | None = None


def _to_tensors(image) -> list[torch.Tensor]:
    """PIL images or paths (grey stays one channel), numpy ((H,W), (H,W,C), (N,H,W,C); uint8 or floats in
    [0, 1]) or tensors ((C,H,W), (N,C,H,W) in [-1, 1]), or a list of them -> list of (C, H, W) in [-1, 1]."""
    items = image if isinstance(image, list | tuple) else [image]
    if not items:
        raise ConfigError("no images given")
    out: list[torch.Tensor] = []
    for index, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            item = open_image(item)
        if isinstance(item, PIL.Image.Image):
            out.append(image_to_tensor(item, 1 if item.mode in _ONE_CHANNEL_MODES else 3))
        elif isinstance(item, np.ndarray):
            array = item.astype(np.float32) / 255.0 if item.dtype == np.uint8 else item.astype(np.float32)
            if array.ndim == 2:
                array = array[..., None]
            array = array[None] if array.ndim == 3 else array
            if array.ndim != 4 or array.min() < 0 or array.max() > 1:
                raise ConfigError(
                    f"image {index}: numpy images are (H, W[, C]) or (N, H, W, C), uint8 or in [0, 1]"
                )
            out.extend(torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2) * 2 - 1)
        elif torch.is_tensor(item):
            tensor = item.detach().float().cpu()
            tensor = tensor[None] if tensor.dim() == 3 else tensor
            if tensor.dim() != 4 or tensor.min() < -1 - 1e-3 or tensor.max() > 1 + 1e-3:
                raise ConfigError(f"image {index}: tensors are (C, H, W) or (N, C, H, W) in [-1, 1]")
            out.extend(tensor.clamp(-1, 1))
        else:
            raise ConfigError(
                f"image {index} is a {type(item).__name__}; pass PIL images, numpy arrays or tensors"
            )
    return out


def _format(images: list[torch.Tensor], masks: list[torch.Tensor], output_type: str):
    images = [((im + 1) / 2).clamp(0, 1) for im in images]
    same = len({tuple(im.shape) for im in images}) == 1
    if output_type == "pt":
        return (torch.stack(images), torch.stack(masks)) if same else (images, masks)
    if output_type == "np":
        ims = [im.permute(1, 2, 0).numpy().astype(np.float32) for im in images]
        ms = [m[0].numpy().astype(np.float32) for m in masks]
        return (np.stack(ims), np.stack(ms)) if same else (ims, ms)
    if output_type == "pil":
        pil_images = []
        for im in images:
            array = (im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            pil_images.append(PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array))
        pil_masks = [PIL.Image.fromarray((m[0].numpy() > 0).astype(np.uint8) * 255) for m in masks]
        return pil_images, pil_masks
    raise ConfigError(f'output_type must be "np", "pt" or "pil"; got {output_type!r}')


class AnomalySynthesisPipeline(DiffusionPipeline):
    r"""
    Synthetic defects with their masks: DRAEM-style noise masks filled with textures or with the texture
    removed, CutPaste (and scar), drawn scratches, spots, holes and cracks, and diffusion inpainting.

    Args:
        vae: optional `AutoencoderKL` or `VQModel` of a latent diffusion model ("diffusion" only).
        unet: optional `UNet2DModel` trained on good images (latents, or pixels without `vae`).
        scheduler: optional DDIM or DDPM scheduler for the UNet.
    """

    _optional_components = ["vae", "unet", "scheduler"]

    def __init__(self, vae=None, unet=None, scheduler=None):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)

    @classmethod
    def from_model_folder(cls, folder: str | os.PathLike) -> AnomalySynthesisPipeline:
        """The vae, unet and scheduler of any saved pipeline folder (a detection model, say), offline.

        Only those three subfolders are read; other components in the folder (a scorer) are ignored.
        """
        import json
        from pathlib import Path

        import diffusers

        root = Path(folder)
        if not (root / "unet" / "config.json").is_file() or not (root / "scheduler").is_dir():
            raise ConfigError(
                f"{root} has no unet/ and scheduler/ subfolders: give a saved pipeline folder "
                "(the output of `diffad fit` / train_unet.py)"
            )
        unet = diffusers.UNet2DModel.from_pretrained(root, subfolder="unet", local_files_only=True)
        scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        # diffad's Noise*Scheduler subclasses share their parents' config: load as the diffusers parent.
        scheduler_class = (
            diffusers.DDPMScheduler
            if "DDPM" in scheduler_config.get("_class_name", "")
            else diffusers.DDIMScheduler
        )
        scheduler = scheduler_class.from_pretrained(root, subfolder="scheduler")
        vae = None
        if (root / "vae" / "config.json").is_file():
            vae_class = json.loads((root / "vae" / "config.json").read_text()).get("_class_name")
            if vae_class not in ("AutoencoderKL", "VQModel"):
                raise ConfigError(f"{root / 'vae'} holds a {vae_class}; expected AutoencoderKL or VQModel")
            vae = getattr(diffusers, vae_class).from_pretrained(root, subfolder="vae", local_files_only=True)
        return cls(vae=vae, unet=unet.eval(), scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        image,
        method: str = "draem",
        generator: torch.Generator | int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        **method_kwargs,
    ) -> AnomalySynthesisOutput | tuple:
        r"""
        Args:
            image: PIL image or path (grey images stay one channel), numpy array ((H, W), (H, W, C),
                (N, H, W, C); uint8 or float in [0, 1]), tensor ((C, H, W), (N, C, H, W) in [-1, 1]),
                or a list of them, of any sizes.
            method: one of "draem", "smooth", "cutpaste", "cutpaste_scar", "scratch", "spots", "crack",
                "diffusion" or "mix" (a method drawn per image; "diffusion" among them when a unet is set).
            generator: a torch.Generator or an int seed; the same seed gives the same defects.
            output_type: "np", "pt" or "pil" (see `AnomalySynthesisOutput`).
            return_dict: return an `AnomalySynthesisOutput` rather than the tuple (images, masks).
            method_kwargs: passed on to the method, e.g. `foreground="auto"`, `textures=FOLDER`,
                `fill="blur"`, `opacity=(0.5, 1)`, `anomaly_strength=2.0`, `num_inference_steps=50`.
        """
        if method not in METHOD_CHOICES:
            raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHOD_CHOICES)}")
        generator = as_generator(generator)
        if method in ("diffusion", "mix") and self.unet is not None:
            method_kwargs = {"unet": self.unet, "scheduler": self.scheduler, "vae": self.vae, **method_kwargs}
        elif method == "diffusion":
            raise ConfigError(
                "method 'diffusion' needs a pipeline with a trained unet and scheduler "
                "(AnomalySynthesisPipeline.from_pretrained(a saved detection model folder))"
            )
        if isinstance(method_kwargs.get("textures"), str | os.PathLike):
            from diffad.synthesis.textures import TextureBank

            method_kwargs["textures"] = TextureBank(method_kwargs["textures"])
        images, masks, params = [], [], []
        for one in self.progress_bar(_to_tensors(image)):
            result = synthesize(one, method, generator, **method_kwargs)
            images.append(result.image.float().cpu())
            masks.append(result.mask.float().cpu())
            params.append(result.params)
        out_images, out_masks = _format(images, masks, output_type)
        if not return_dict:
            return out_images, out_masks
        return AnomalySynthesisOutput(images=out_images, masks=out_masks, params=params)
