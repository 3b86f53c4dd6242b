"""Reference detectors on pretrained features: PaDiM and PatchCore."""

from diffad.baselines.padim import PaDiM
from diffad.baselines.patchcore import PatchCore, greedy_coreset

__all__ = ["PaDiM", "PatchCore", "greedy_coreset"]
