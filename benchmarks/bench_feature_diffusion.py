"""The feature-space diffusion detector against the reference detectors, one table per run.

    python benchmarks/bench_feature_diffusion.py --work runs/bench-fd \\
        --dataset dagm=DATA/dagm_class1 --dataset ksdd=DATA/kolektorsdd --dataset elpv-mono=elpv/mono

Each `--dataset NAME=DATA[/CATEGORY]` is a folder in MVTec AD layout (`<cat>/train/good`,
`<cat>/test/<type>`, `<cat>/ground_truth/<type>/<stem>_mask.png`; e.g. MVTec AD, or DAGM 2007,
KolektorSDD and MVTec 3D-AD converted to it), or `elpv/<mono|poly>` (the `elpv-dataset` package,
image labels only). On each, at `--resolution`:

- `diffad fit --first_stage features` trains the detector into `--work/NAME` (reused when there),
  with `--fit_minutes`; its fit time is read from the folder's fit_summary.json;
- PaDiM (and PatchCore with `--references padim,patchcore`) are fitted on the good training images;
- the pipeline computes every residual once on the test split, and the rows read settings off them:
  the diffusion residuals alone (denoise, score, latent, latent_cosine; no Gaussian), the same fused
  with the per-position Gaussians of the latents (latent_norm, PaDiM's map), the Gaussians alone, and
  the fit's own choice. "Best" in a family is taken from the fit's selection.json, measured on
  synthetic defects made on held-out good training images: no test image chooses anything.
- ms per image: the pipeline with the fit's choice and with the diffusion-alone setting, and the
  references, side by side in this process (`--threads` threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baselines import load_split, markdown_table, reference_row  # noqa: E402

from diffad.data import load_samples  # noqa: E402
from diffad.metrics import compute_metrics  # noqa: E402

DIFFUSION = ("denoise", "score", "latent", "latent_cosine")
FAMILIES = {
    "feature diffusion alone": lambda w: any(w.get(k, 0) for k in DIFFUSION) and not w.get("latent_norm", 0),
    "feature diffusion fused with the Gaussians": lambda w: (
        any(w.get(k, 0) for k in DIFFUSION) and w.get("latent_norm", 0) > 0
    ),
    "Gaussians of the latents alone": lambda w: (
        w.get("latent_norm", 0) > 0 and not any(w.get(k, 0) for k in DIFFUSION)
    ),
}
TIMED_IMAGES = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", required=True, metavar="NAME=DATA[/CATEGORY]")
    p.add_argument("--work", required=True, help="folder for the fitted detectors (reused when there)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--fit_minutes", type=float, default=8.0)
    p.add_argument("--fit_args", default="", help="extra `diffad fit` arguments, as one string")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--references", default="padim", help="reference detectors to run ('' for none)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def split_data(spec: str) -> tuple[str, str | None]:
    if spec.startswith("elpv/"):
        return "elpv", spec.split("/", 1)[1]
    return spec, None


def fit_detector(data: str, category: str | None, out: Path, channels: int, args) -> float:
    """Fit (unless `out` holds a pipeline); the fit's seconds from its summary."""
    from diffad.cli import main

    if not (out / "model_index.json").is_file():
        argv = ["fit", "--data", data, "--output_dir", str(out), "--first_stage", "features",
                "--resolution", str(args.resolution), "--channels", str(channels),
                "--max_minutes", str(args.fit_minutes), "--seed", str(args.seed), *args.fit_args.split()]  # fmt: skip
        if category:
            argv += ["--category", category]
        if main(argv) != 0:
            raise SystemExit(f"diffad fit failed on {data}")
    summary = json.loads((out / "fit_summary.json").read_text())
    return sum(float(s.get("seconds", 0)) for s in summary["stages"])


def best_trial(trials: list[dict], where) -> dict | None:
    kept = [t for t in trials if where(t["weights"])]
    return max(kept, key=lambda t: t["objective"]) if kept else None


def row_metrics(pipe, residuals, setting, labels, masks) -> dict:
    maps = pipe.scorer.combine(residuals, weights=setting["weights"], deviation=setting["deviation"])
    scores = pipe.scorer.score(maps)
    return compute_metrics(scores.numpy(), labels, maps.numpy() if masks is not None else None, masks)


def timed(pipe, images, setting: dict | None, batch_size: int) -> float:
    """ms per image of `pipe` detecting with `setting`'s weights (None: its own)."""
    scorer = pipe.scorer
    saved = dict(scorer.config)
    if setting is not None:
        scorer.register_to_config(
            **{f"{k}_weight": v for k, v in setting["weights"].items()}, deviation=setting["deviation"]
        )
    pipe(images[:2], output_reconstructions=False)  # warm-up
    start = time.perf_counter()
    pipe(
        images,
        output_reconstructions=False,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(0),
    )
    ms = 1000 * (time.perf_counter() - start) / len(images)
    scorer.register_to_config(**{k: v for k, v in saved.items() if k.endswith("_weight") or k == "deviation"})
    return ms


def main(args) -> list[dict]:
    from diffad import AnomalyDetectionPipeline
    from diffad.models.efficientnet import EfficientNetLiteFeatures
    from diffad.training.selection import candidates

    torch.set_num_threads(args.threads)
    rows = []
    for item in args.dataset:
        name, spec = item.split("=", 1)
        data, category = split_data(spec)
        samples = load_samples(data, category=category)
        test, masks, labels = load_split(samples, "test", args.resolution, 3)
        channels = 1 if bool((test[:, 0] == test[:, 1]).all() and (test[:, 1] == test[:, 2]).all()) else 3
        out = Path(args.work) / name
        fit_s = fit_detector(data, category, out, channels, args)
        pipe = AnomalyDetectionPipeline.from_pretrained(str(out))
        pipe.set_progress_bar_config(disable=True)
        chosen_weights = {k: pipe.scorer.weight(k) for k in candidates(pipe)}
        chosen = {"weights": chosen_weights, "deviation": pipe.scorer.config.deviation}
        trials = json.loads((out / "selection.json").read_text())["trials"]
        x = test[:, :channels]
        pipe.scorer.register_to_config(**{f"{k}_weight": 1.0 for k in candidates(pipe)})
        residuals = pipe.residual_maps(
            list(x), generator=torch.Generator().manual_seed(args.seed), batch_size=args.batch_size
        )
        for family, where in [*FAMILIES.items(), ("the fit's own choice", None)]:
            setting = chosen if where is None else best_trial(trials, where)
            if setting is None:
                continue
            weights = ", ".join(f"{k} {v:g}" for k, v in setting["weights"].items() if v)
            metrics = row_metrics(pipe, residuals, setting, labels, masks)
            ms = timed(pipe, x[:TIMED_IMAGES], setting, args.batch_size)
            rows.append({"set": name, "detector": f"{family} ({weights}; {setting['deviation']})", **metrics,
                         "ms_per_image": ms, "fit_s": fit_s})  # fmt: skip
            print(
                rows[-1]["set"],
                rows[-1]["detector"],
                {
                    k: round(v, 3)
                    for k, v in metrics.items()
                    if k in ("image_auroc", "pixel_auroc", "aupro") and v is not None
                },
                flush=True,
            )
        if args.references:
            train, _, _ = load_split(samples, "train", args.resolution, 3)
            extractor = EfficientNetLiteFeatures.from_wheel("lite0")
            for method in args.references.split(","):
                row = reference_row(method, extractor, train, test, masks, labels, args)
                rows.append({"set": name, "detector": method, **row})
                print(
                    name,
                    method,
                    {
                        k: round(row[k], 3)
                        for k in ("image_auroc", "pixel_auroc", "aupro")
                        if row.get(k) is not None
                    },
                    flush=True,
                )
    print(markdown_table(rows, ("set", "detector"), extra=(("fit s", "fit_s", "{:.0f}"),)))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main(parse_args())
