"""Reference detectors on pretrained features: PaDiM and PatchCore."""
