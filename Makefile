# Plain entry points; the README names them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch on machines that have it locally; override for CUDA, e.g. TORCH=torch==2.13.0
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

setup: $(BIN)/.installed  ## create .venv and install everything

run: setup  ## the main job: the SLA-routing server on model_repository/ (on first run the demo repository builds in the background: b0 serves within minutes, the rest as they train)
	$(BIN)/effx-serve serve --repo model_repository --demo --host $(HOST) --port $(PORT)

test: setup  ## the whole test suite (it includes the import contracts, tests/test_layers.py, and ruff)
	$(BIN)/python -m pytest

lint: setup  ## ruff and the import contracts alone (seconds)
	$(BIN)/ruff check effx_serve training search loadtest tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
