"""The install maps every package folder, and the command line answers."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {"diffad.pipelines"}
    for init in (ROOT / "diffad").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    assert found == listed, f"add to / remove from pyproject packages: {found ^ listed}"


def test_pipelines_import_from_any_directory(tmp_path):
    code = "import diffad.pipelines, sys; print(diffad.pipelines.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert Path(out.stdout.strip()).parent == ROOT / "pipelines"


def test_cli_help_and_unknown_command():
    ok = subprocess.run([sys.executable, "-m", "diffad.cli", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "usage: diffad" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "diffad.cli", "no-such-command"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
