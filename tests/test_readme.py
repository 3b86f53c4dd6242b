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


def test_python_example_defines_every_name_it_uses():
    import ast
    import builtins

    (code,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    tree = ast.parse(code)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.comprehension):
            defined.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert used <= defined, used - defined


def test_what_a_user_reads_points_at_nothing_they_lack():
    texts = {"README.md": README}
    for folder in ("benchmarks", "docs", "scripts"):
        texts.update({str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / folder).rglob("*.py")})
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "docs").glob("*.md")})
    for name, text in texts.items():
        for words in ("/work/", "shared/data", "closing note"):  # the development machines, the tracker
            assert words not in text, f"{name} mentions {words}"
    for doc in re.findall(r"\b((?:docs/)?[A-Z]+\.md)\b", README):
        assert (ROOT / doc).is_file(), doc


def test_readme_says_what_the_score_is_and_where_detect_writes():
    assert "(max of the map)" not in README
    assert "maximum of the anomaly map at the pipeline's working resolution" in README
    assert "writes `maps/my_images/a/b.png`" in README
