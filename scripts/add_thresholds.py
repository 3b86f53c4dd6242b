"""Give a pipeline fitted before thresholds existed its two thresholds, as `diffad fit` now sets them.

It takes the same held-out good training images the fit chose its residual weights on (the split of
`diffad.training.calibration.calibrate_pipeline`, rebuilt from the same seed and counts), makes the
same synthetic defects on them, scores both with the pipeline as saved, and writes `threshold_f1`,
`threshold_fpr` and `threshold_fpr_target` into its scorer's config.json (nothing else changes; the
statistics and weights stay). It checks the split first: the image AUROC of these scores must match
the one selection.json recorded for the chosen setting.

    python scripts/add_thresholds.py --model checkpoints/elpv-mono --data elpv --category mono
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--category", default=None)
    p.add_argument("--seed", type=int, default=0, help="the fit's --seed")
    p.add_argument("--calibration_images", type=int, default=32, help="the fit's --calibration_images")
    p.add_argument("--select_images", type=int, default=24, help="the fit's --select_images")
    p.add_argument("--fpr", type=float, default=0.01)
    return p.parse_args(argv)


def held_out(samples: list, args, features: bool) -> list:
    """The good training images the fit held out for its choice (as calibrate_pipeline splits)."""
    from diffad.training.order import generator_for

    order = torch.randperm(len(samples), generator=generator_for(args.seed, "calibration")).tolist()
    rest = order[args.calibration_images :]
    count = min(args.select_images, len(rest) // 2 if features else len(rest))
    return [samples[i] for i in sorted(rest[:count])]


def main(args: argparse.Namespace) -> int:
    from diffad import AnomalyDetectionPipeline
    from diffad.files import atomic_write
    from diffad.metrics.ranking import auroc
    from diffad.scoring import thresholds
    from diffad.training.checkpoints import write_json_atomic
    from diffad.training.data import good_training_samples, load_images
    from diffad.training.selection import make_defects

    folder = Path(args.model)
    pipe = AnomalyDetectionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    features = pipe.feature_extractor is not None
    held = held_out(good_training_samples(args.data, args.category), args, features)
    size = max(pipe.resolution, pipe.scorer.feature_gaussian_resolution if features else 0)
    good = load_images(held, size, pipe.image_channels)
    defective, _ = make_defects(good, args.seed)
    images = list(torch.cat([good, defective]))
    scores = pipe(images, generator=torch.Generator().manual_seed(args.seed), output_type="np").anomaly_scores
    good_scores, defect_scores = scores[: len(good)], scores[len(good) :]
    found = auroc(np.sort(good_scores), np.sort(defect_scores))
    record_file = folder / "selection.json"
    record = json.loads(record_file.read_text())
    recorded = record["chosen"]["image_auroc"]
    print(f"{len(held)} held-out images; image AUROC {found:.4f}, selection.json recorded {recorded:.4f}")
    if abs(found - recorded) > 0.02:
        raise SystemExit("these are not the images the fit held out: check --seed and the image counts")
    fitted = thresholds.fit_thresholds(good_scores, defect_scores, args.fpr)
    config_file = folder / "scorer" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(thresholds.scorer_settings(fitted))
    atomic_write(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
    record["thresholds"] = {
        **fitted,
        "default": config.get("default_threshold", thresholds.DEFAULT_KIND),
        "good_scores": good_scores.tolist(),
        "defect_scores": defect_scores.tolist(),
        "added_by": "scripts/add_thresholds.py",
    }
    write_json_atomic(record_file, record)
    print(
        f"thresholds: f1 {fitted['f1']:.4g}, fpr {fitted['fpr']:.4g} (target {args.fpr:g}); wrote {config_file}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
