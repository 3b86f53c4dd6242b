"""`diffad data summary PATH`: what a dataset folder holds, and what is wrong with it."""

from __future__ import annotations

import argparse
import sys
import warnings


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect datasets (MVTec AD, VisA, Real-IAD, folders, ELPV)")
    commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    summary = commands.add_parser(
        "summary",
        help="counts per split and defect type, masks, image sizes and modes",
        description="Print what a dataset holds and check every image and mask. PATH is a dataset "
        "folder (layout detected) or 'elpv' for the ELPV cells of the elpv-dataset package. "
        "Exits 2, naming the files, if an image or mask is missing, unreadable or mis-sized.",
    )
    summary.add_argument("path", metavar="PATH", help="dataset folder, or 'elpv'")
    summary.add_argument("--category", help="one category of a multi-category dataset (default: all)")
    summary.add_argument("--defects", metavar="DIR", help="plain folder only: a folder of defect images")
    summary.add_argument(
        "--masks", metavar="DIR", help="plain folder only: a folder of masks for the defects"
    )
    summary.set_defaults(func=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    from diffad.data.detect import FORMATS, detect_format, load_samples
    from diffad.data.summary import format_summary, summarize

    kind = detect_format(args.path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = load_samples(args.path, args.category, defects=args.defects, masks=args.masks)
        summaries, problems = summarize(samples)
    print(format_summary(f"{args.path}: {FORMATS[kind]}, {len(samples)} images", summaries))
    if kind == "elpv":
        from diffad.data.elpv import note

        print(f"\nnote: {note(args.category)}")
    for w in caught:
        print(f"diffad data: warning: {w.message}", file=sys.stderr)
    for problem in problems:
        print(f"diffad data: error: {problem}", file=sys.stderr)
    if problems:
        print(f"diffad data: {len(problems)} problem(s) found; fix or remove those files", file=sys.stderr)
        return 2
    return 0
