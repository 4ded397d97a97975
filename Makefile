# Plain entry points; the README names them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch on machines that have it locally; override for CUDA, e.g. TORCH=torch==2.13.0
TORCH ?= torch==2.13.0

.PHONY: setup run test lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

setup: $(BIN)/.installed  ## create .venv and install everything

run: setup  ## the main job (until the server lands: the model zoo and its roofline)
	$(BIN)/effx-serve models
	$(BIN)/effx-serve roofline efficientnet-b0 efficientnet-x-b0 --hardware nvidia-h200 --batch 128 --precision bf16

test: setup  ## the whole test suite
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check effx_serve training search tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
