"""The defect methods by name, and `synthesize`, which runs one (or, for "mix", one drawn at random)."""

from __future__ import annotations

import functools
import inspect
from functools import partial

import torch

from diffad.errors import ConfigError
from diffad.synthesis.common import SyntheticDefect, as_generator, choice
from diffad.synthesis.cut_paste import cutpaste, cutpaste_scar
from diffad.synthesis.draem import REMOVING_FILLS, draem_anomaly
from diffad.synthesis.drawn import crack, scratch, spots
from diffad.synthesis.inpaint import diffusion_inpaint

METHODS = {
    "draem": draem_anomaly,
    "smooth": partial(draem_anomaly, fill=REMOVING_FILLS),  # texture removed: blur, smooth, flat patches
    "cutpaste": cutpaste,
    "cutpaste_scar": cutpaste_scar,
    "scratch": scratch,
    "spots": spots,
    "crack": crack,
    "diffusion": diffusion_inpaint,
}
MODEL_FREE = tuple(name for name in METHODS if name != "diffusion")
METHOD_CHOICES = (*METHODS, "mix")


def _accepted(fn, kwargs: dict) -> dict:
    """The keyword arguments `fn` takes; "mix" passes each method only its own."""
    target = fn.func if isinstance(fn, partial) else fn
    names = inspect.signature(inspect.unwrap(target)).parameters
    return {k: v for k, v in kwargs.items() if k in names}


def mix_choices(has_model: bool) -> tuple[str, ...]:
    return (*MODEL_FREE, "diffusion") if has_model else MODEL_FREE


def synthesize(
    image: torch.Tensor, method: str = "draem", generator: torch.Generator | int | None = None, **kwargs
) -> SyntheticDefect:
    """One defect on `image` ((C,H,W) or a batch, [-1, 1]) by method name; see METHOD_CHOICES.

    "mix" draws the method per image from the model-free ones (and "diffusion" when `unet` is given);
    each method gets only the keyword arguments it takes. `.params["method"]` names the method used.
    """
    generator = as_generator(generator)
    if method not in METHOD_CHOICES:
        raise ConfigError(f"unknown synthesis method {method!r}; choose from {', '.join(METHOD_CHOICES)}")
    if method == "mix":
        options = mix_choices(kwargs.get("unet") is not None)
        if image.dim() == 4:
            results = [synthesize(one, "mix", generator, **_slice(kwargs, i)) for i, one in enumerate(image)]
            return SyntheticDefect(
                torch.stack([r.image for r in results]),
                torch.stack([r.mask for r in results]),
                [r.params for r in results],
            )
        method = choice(generator, options)
    fn = METHODS[method]
    unknown = set(kwargs) - set(_all_names())
    if unknown:
        raise ConfigError(f"unknown synthesis option(s) {', '.join(sorted(unknown))} for method {method!r}")
    result = fn(image, generator, **_accepted(fn, kwargs))
    for p in result.params if isinstance(result.params, list) else [result.params]:
        p["method"] = method
    return result


def _slice(kwargs: dict, i: int) -> dict:
    # Per-image masks and foregrounds of a batch go with their image.
    out = dict(kwargs)
    for key in ("mask", "foreground"):
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            out[key] = value[i]
    return out


@functools.cache
def _all_names() -> frozenset[str]:
    names: set[str] = set()
    for fn in METHODS.values():
        target = fn.func if isinstance(fn, partial) else fn
        names |= set(inspect.signature(inspect.unwrap(target)).parameters)
    return frozenset(names - {"image", "generator"})
