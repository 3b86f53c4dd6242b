# The two commands of the README. Each creates .venv if there is none, installs the CPU build of
# torch first (a plain `torch` requirement would pull a multi-GB CUDA build), then the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffad-installed

.PHONY: demo test lint setup clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,demo,features]"
	touch $(STAMP)

setup: $(STAMP)

# Until `diffad demo` exists, the first command summarises the ELPV solar cells it will run on.
demo: $(STAMP)
	$(BIN)/diffad data summary elpv --category mono

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

clean-venv:
	rm -rf $(VENV)
