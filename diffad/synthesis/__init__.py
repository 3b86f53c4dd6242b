"""Synthetic defect generators: masks, texture paste, cut-paste, drawn defects, diffusion inpainting."""
