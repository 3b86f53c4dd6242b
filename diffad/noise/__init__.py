"""Simplex noise in torch (batched, seeded, on any device)."""

from diffad.noise.opensimplex import opensimplex2, opensimplex3
from diffad.noise.simplex import NOISE_KINDS, sample_noise, simplex_noise

__all__ = ["NOISE_KINDS", "opensimplex2", "opensimplex3", "sample_noise", "simplex_noise"]
