"""Diffusers-style pipelines, installed as `diffad.pipelines`."""
