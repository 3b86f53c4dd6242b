"""`diffad demo`: the main job, end to end on real solar-cell images.

On the mono cells of the `elpv-dataset` package it loads the shipped pipeline (checkpoints/elpv-mono),
detects on the test split (held-back good cells and the defective ones), evaluates, and writes the
report. ELPV has only image-level labels, so it also makes synthetic defects on held-back good cells
(none of which the model saw) and reports the pixel metrics there, labelled synthetic.

    demo_output/index.html            the summary page, linking the two reports
    demo_output/real/                 metrics.json, scores.csv, report.html on the real ELPV defects
    demo_output/synthetic_data/       the synthetic defect dataset (MVTec layout, with masks)
    demo_output/synthetic/            metrics.json, scores.csv, report.html on the synthetic defects
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import time
from pathlib import Path

from diffad.errors import ConfigError, OutputExistsError

MARKER = ".diffad-demo"
CATEGORY = "mono"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "elpv-mono"
# The shipped model's recipe, which `diffad demo --train` and `make checkpoint` both follow: `diffad fit`
# on the mono cells at 128 px in one channel (the cells are grey), the small preset, Lite0 features
# projected to 64 dimensions (the folder stays under 40 MB), and 3 denoising steps at detection.
FIT_ARGS = (
    "--data", "elpv", "--category", CATEGORY, "--first_stage", "kl", "--resolution", "128", "--channels", "1",
    "--preset", "small", "--features", "lite0", "--feature_dim", "64", "--num_inference_steps", "3",
)  # fmt: skip
TRAIN_MINUTES = 22.0  # training budget of `--train`: with detection and the report, under 30 minutes
TABLE_KEYS = (
    "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "mad",
)  # fmt: skip


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="detect defects in real solar cells (ELPV) with the shipped model and write a report",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--model", default=None, help=f"pipeline folder (default: {DEFAULT_MODEL})")
    p.add_argument("--output_dir", default="demo_output", help="where the reports go (default: demo_output)")
    p.add_argument(
        "--train",
        action="store_true",
        help="train a model from scratch first, with the shipped model's recipe (about 25 minutes in all)",
    )
    p.add_argument(
        "--max_minutes",
        type=float,
        default=TRAIN_MINUTES,
        help=f"training budget with --train ({TRAIN_MINUTES:g})",
    )
    p.add_argument("--num_synthetic", type=int, default=60, help="synthetic defects to make (default: 60)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N real test images (quick look)")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the synthetic defects, the detection noise and, with --train, the training",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an output folder the demo did not make")
    p.set_defaults(func=run)


def prepare(output_dir: Path, overwrite: bool) -> None:
    """The demo owns its folder: it reuses one it made (marked), refuses any other non-empty one."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"--output_dir {output_dir} is a file; give a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MARKER).is_file():
        if not overwrite:
            raise OutputExistsError(
                f"{output_dir} already holds files that `diffad demo` did not write; "
                "pass another --output_dir, or --overwrite to replace them"
            )
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKER).write_text("written by `diffad demo`; it may rewrite this folder\n")


def train_model(output_dir: Path, max_minutes: float, seed: int) -> Path:
    from diffad.training.fit import add_fit_args, run_fit

    model_dir = output_dir / "model"
    parser = add_fit_args(argparse.ArgumentParser())
    argv = [*FIT_ARGS, "--output_dir", str(model_dir), "--max_minutes", str(max_minutes), "--seed", str(seed)]
    if (model_dir / "model_index.json").is_file() or model_dir.is_dir():
        argv.append("--resume")
    run_fit(parser.parse_args(argv))
    return model_dir


def synthetic_sources(folder: Path) -> Path:
    """The held-back good test cells, linked (or copied) into one folder for the synthesis writer."""
    from diffad.data import load_samples

    folder.mkdir(parents=True, exist_ok=True)
    for sample in load_samples("elpv", category=CATEGORY, split="test"):
        if sample.label != 0:
            continue
        target = folder / Path(sample.image_path).name
        if not target.exists():
            try:
                os.symlink(sample.image_path, target)
            except OSError:
                shutil.copyfile(sample.image_path, target)
    return folder


def make_synthetic(output_dir: Path, num: int, seed: int, resolution: int) -> Path:
    from diffad.synthesis.dataset_writer import Settings, synthesize_dataset

    sources = synthetic_sources(output_dir / "synthetic_sources")
    data = output_dir / "synthetic_data"
    # Half of the held-back cells stay good (test/good), half carry the defects; all are unseen.
    settings = Settings(
        input=str(sources.resolve()), method="mix", num=num, seed=seed, resolution=resolution,
        test_fraction=0.5,
    )  # fmt: skip
    synthesize_dataset(settings, data, overwrite=False, progress=True)
    return data


def _fmt(value) -> str:
    return "   -  " if value is None else f"{100 * value:6.1f}"


def table(rows: list[tuple[str, dict]]) -> str:
    """The metrics in percent, one row per evaluation, as ADer prints them."""
    width = max(len(name) for name, _ in rows)
    head = " " * width + "  " + " ".join(f"{k:>12}" for k in TABLE_KEYS)
    lines = [head]
    for name, metrics in rows:
        lines.append(f"{name:<{width}}  " + " ".join(f"{_fmt(metrics.get(k)):>12}" for k in TABLE_KEYS))
    return "\n".join(lines)


def write_index(output_dir: Path, rows: list[tuple[str, dict, str]], facts: list[str]) -> Path:
    from diffad.files import atomic_write

    head = "".join(f"<th>{k}</th>" for k in TABLE_KEYS)
    body = ""
    for name, metrics, link in rows:
        cells = "".join(f"<td>{_fmt(metrics.get(k)).strip()}</td>" for k in TABLE_KEYS)
        body += f'<tr><td><a href="{link}">{html.escape(name)}</a></td>{cells}</tr>\n'
    items = "".join(f"<li>{html.escape(f)}</li>" for f in facts)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>diffad demo</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body><h1>diffad demo: defects in solar cells (ELPV, mono)</h1>
<table><tr><th>evaluation</th>{head}</tr>
{body}</table><p>Metrics in percent; "-": not defined (ELPV has image-level labels only).
Click a row for its report: ROC and PRO curves, score histogram, best and worst cases.</p>
<ul>{items}</ul></body></html>
"""
    return atomic_write(output_dir / "index.html", page)


def run(args: argparse.Namespace) -> int:
    from diffad.report.evaluate import evaluate

    if args.num_synthetic < 1:
        raise ConfigError(f"--num_synthetic must be at least 1, got {args.num_synthetic}")
    start = time.monotonic()
    out = Path(args.output_dir)
    prepare(out, args.overwrite)
    if args.train:
        model = train_model(out, args.max_minutes, args.seed)
    else:
        model = Path(args.model) if args.model else DEFAULT_MODEL
    if not (model / "model_index.json").is_file() and not (model / "detector_config.json").is_file():
        raise ConfigError(
            f"{model} holds no saved pipeline; pass --model DIR, or run `diffad demo --train` "
            "(or `make checkpoint`) to train one"
        )
    common = {"batch_size": args.batch_size, "seed": args.seed, "overwrite": True}
    print(f"diffad demo: detecting defects in ELPV {CATEGORY} cells with {model}")
    real = evaluate(model, "elpv", out / "real", category=CATEGORY, limit=args.limit, **common)
    resolution = int(real["settings"]["detectors"][CATEGORY]["resolution"])
    print(f"diffad demo: making {args.num_synthetic} synthetic defects on held-back good cells")
    data = make_synthetic(out, args.num_synthetic, args.seed, resolution)
    synthetic = evaluate(model, data, out / "synthetic", **common)
    rows = [
        ("real defects (ELPV mono)", real, "real/report.html"),
        ("synthetic defects (held-back good cells)", synthetic, "synthetic/report.html"),
    ]
    minutes = (time.monotonic() - start) / 60
    facts = [
        f"model: {model.resolve()}",
        f"real: {real['num_images']} test images, {real['seconds_per_image']:.3f} s per image",
        f"synthetic: {synthetic['num_images']} images ({args.num_synthetic} defects, mixed methods)",
        f"whole demo: {minutes:.1f} minutes",
    ]
    index = write_index(out, rows, facts)
    print()
    print(table([(name, metrics) for name, metrics, _ in rows]))
    print()
    print("\n".join(facts))
    print(f"report: {index}")
    return 0
