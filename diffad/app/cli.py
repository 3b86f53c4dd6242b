"""`diffad serve`: a local web page to inspect images with a saved detector (needs the `[app]` extra)."""

from __future__ import annotations

import argparse
import importlib.util

from diffad.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a local web page: upload images, see maps, verdicts and a threshold slider",
        description="Serve a page (Gradio) where images uploaded, or a folder on this machine, are run "
        "through a saved detector: input | map overlay | reconstruction | region above the threshold, "
        "the score and the verdict of each, a threshold slider that re-draws them from the kept maps, "
        "and downloads of the maps and a CSV. Listens on 127.0.0.1 unless --host says otherwise.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="saved pipeline or detector folder")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; default local)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (same seed, same maps)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument(
        "--category",
        default=None,
        help="the images' category, for a model of several categories or a folder of one model per category",
    )
    parser.add_argument(
        "--input",
        default=None,
        metavar="FOLDER",
        help="a folder on this machine to inspect when the page opens",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError('diffad serve needs Gradio: pip install "diffad[app]" (or pip install gradio)')
    if not 0 < args.port < 65536 or args.batch_size < 1:
        raise ConfigError(
            f"--port must be in 1..65535 and --batch_size at least 1; got {args.port}, {args.batch_size}"
        )
    from diffad.app.inspection import Inspector
    from diffad.app.page import build_page, launch

    inspector = Inspector(
        args.model, args.device, seed=args.seed, batch_size=args.batch_size, category=args.category
    )
    print(f"diffad serve: {inspector.describe()}")
    print(f"diffad serve: open http://{args.host}:{args.port} (Ctrl-C stops it)")
    launch(build_page(inspector, args.input), args.host, args.port, block=True)
    return 0
