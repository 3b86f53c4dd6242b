# The two commands of the README. Each creates .venv if there is none, installs the CPU build of
# torch first (a plain `torch` requirement would pull a multi-GB CUDA build), then the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffad-installed

.PHONY: demo test lint setup clean-venv checkpoint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,demo,features,app]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: the shipped model on real ELPV solar cells, reports in demo_output/.
demo: $(STAMP)
	$(BIN)/diffad demo

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

clean-venv:
	rm -rf $(VENV)

# Rebuilds the demo's shipped model, checkpoints/elpv-mono (about 25 minutes on 2 CPU cores).
checkpoint: $(STAMP)
	$(BIN)/python scripts/make_demo_checkpoint.py --output_dir checkpoints/elpv-mono
