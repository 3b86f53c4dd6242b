"""Every command the README shows is one the project accepts: `diffad ...` lines parse with the CLI,
training-script lines parse with their own parsers, named configs, scripts and pictures exist, and
the Makefile has each `make` target. The commands themselves run in the other tests at tiny sizes."""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from diffad.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
LINES = [line.split("#")[0].strip() for block in BLOCKS for line in block.splitlines() if line.strip()]


def test_readme_starts_with_the_two_commands():
    first = BLOCKS[0].splitlines()
    assert first[0].startswith("make demo") and first[1].startswith("make test")
    makefile = (ROOT / "Makefile").read_text()
    for line in LINES:
        if line.startswith("make "):
            assert re.search(rf"^{line.split()[1]}:", makefile, flags=re.M), line
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


@pytest.mark.parametrize("line", [x for x in LINES if x.startswith("diffad ")])
def test_diffad_commands_parse(line):
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.func)


@pytest.mark.parametrize("line", [x for x in LINES if "train_vae.py" in x or "train_unet.py" in x])
def test_training_commands_parse(line):
    words = shlex.split(line)
    if "--config_file" in words:
        assert (ROOT / words[words.index("--config_file") + 1]).is_file()
    script = next(w for w in words if w.endswith(".py"))
    rest = words[words.index(script) + 1 :]
    module = {"train_vae.py": "vae_stage", "train_unet.py": "unet_stage"}[script]
    parse_args = importlib.import_module(f"diffad.training.{module}").parse_args
    args = parse_args(rest)
    assert args.output_dir == rest[rest.index("--output_dir") + 1]


@pytest.mark.parametrize("line", [x for x in LINES if x.startswith("python benchmarks/")])
def test_benchmark_commands_parse(line):
    words = shlex.split(line)
    script = ROOT / words[1]
    assert script.is_file()
    if "--help" in words or len(words) == 2:  # no arguments to check
        return
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.parse_args(words[2:])


def test_pictures_exist():
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / picture).is_file(), picture
