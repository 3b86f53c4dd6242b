"""`python -m diffad ...`, which `accelerate launch -m diffad ...` runs in every process."""

import sys

from diffad.cli import main

sys.exit(main())
