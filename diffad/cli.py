"""The `diffad` command. Each subcommand lives beside the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

from diffad import __version__
from diffad.errors import DiffadError

# Modules that define `register(subparsers)`; each adds its subcommand(s) with `set_defaults(func=...)`.
# Heavy imports (torch, diffusers) stay inside the command functions so `diffad --help` is quick.
COMMAND_MODULES: list[str] = [
    "diffad.data.cli",
    "diffad.scoring.detect_cli",
    "diffad.synthesis.cli",
    "diffad.report.cli",
    "diffad.training.cli",
    "diffad.demo",
    "diffad.app.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffad",
        description="Latent diffusion anomaly detection: train on good images, map defects, make synthetic ones.",
    )
    parser.add_argument("--version", action="version", version=f"diffad {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except DiffadError as err:
        print(f"diffad {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffad {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
