"""Run a stage's `main(args)` as a script: a user's mistake prints one line and exits 2, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from diffad.errors import DiffadError


def run_script(main: Callable, args, prog: str) -> int:
    try:
        main(args)
    except DiffadError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
