"""`diffad evaluate`: metrics.json, scores.csv and report.html of a saved detector on a test split."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Run a saved detector over the test images of a dataset and write, under --output_dir:
  metrics.json  image/pixel AUROC, AP, F1-max, AUPRO and their mean mAD (ADer's metrics), per defect
                type and per category, with the number of images, seconds per image and settings;
  scores.csv    path, label, defect_type, score, category for every test image;
  report.html   one page that opens offline: the metrics table, ROC and PRO curves, the score
                histogram, and input | reconstruction | map | ground truth for the best and worst cases.
--model is a folder saved by AnomalyDetectionPipeline.save_pretrained or by a baseline (PaDiM,
PatchCore); for a root with several categories it may hold one such folder per category name.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics and an HTML report of a saved detector on a dataset's test split",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="saved pipeline or detector folder")
    parser.add_argument(
        "--data", required=True, metavar="PATH", help="dataset folder (layout detected), or 'elpv'"
    )
    parser.add_argument("--category", help="one category of a multi-category dataset (default: every one)")
    parser.add_argument("--output_dir", required=True, metavar="OUT", help="where the three outputs go")
    parser.add_argument(
        "--resolution", type=int, help="side the images and masks are resized to (default: the detector's)"
    )
    parser.add_argument(
        "--batch_size", type=int, default=8, help="images per forward pass (lower it if memory runs out)"
    )
    parser.add_argument("--limit", type=int, help="at most N test images per category, evenly spread")
    parser.add_argument("--seed", type=int, default=0, help="seed of the detector's noise")
    parser.add_argument(
        "--aupro",
        choices=("exact", "ader"),
        default="exact",
        help="exact curve, or ADer's 200-threshold variant",
    )
    parser.add_argument(
        "--metrics_memory",
        default="2GB",
        metavar="SIZE",
        help="exact pixel metrics while a category's maps fit in SIZE (e.g. 2GB, 500MB); past it, "
        "streamed histograms in flat memory, within 1e-3 of the exact figures (0: always stream)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--cases", type=int, default=4, help="best and worst cases shown per category")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty folder made elsewhere"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from diffad.report.evaluate import evaluate
    from diffad.report.html import COLUMN_NAMES
    from diffad.report.outputs import METRICS_FILE, REPORT_FILE, SCORES_FILE, describe_rates

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        document = evaluate(
            args.model,
            args.data,
            args.output_dir,
            category=args.category,
            resolution=args.resolution,
            batch_size=args.batch_size,
            limit=args.limit,
            seed=args.seed,
            aupro=args.aupro,
            device=args.device,
            overwrite=args.overwrite,
            num_cases=args.cases,
            metrics_memory=args.metrics_memory,
        )
    if document is None:  # another process of `accelerate launch`: the main one reports
        return 0
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
        print(f"diffad evaluate: warning: {message}")
    per_category = document["per_category"]
    rows = list(per_category.items()) + ([("mean", document)] if len(per_category) > 1 else [])
    width = max(len(name) for name, _ in rows) + 2
    print("".ljust(width) + "".join(f"{COLUMN_NAMES[k]:>9}" for k in COLUMN_NAMES))
    for name, values in rows:
        cells = "".join("      n/a" if values[k] is None else f"{100 * values[k]:9.1f}" for k in COLUMN_NAMES)
        print(name.ljust(width) + cells)
    seconds = document["seconds_per_image"]
    print(
        f"{document['num_images']} images" + (f", {seconds:.3f} s per image" if seconds is not None else "")
    )
    for name, values in per_category.items():
        at = values.get("at_threshold")
        print(f"{name}: " + (describe_rates(at) if at else "no saved threshold"))
    for name in (METRICS_FILE, SCORES_FILE, REPORT_FILE):
        print(f"wrote {args.output_dir}/{name}")
    return 0
