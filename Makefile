# Two commands set everything up on a machine that has only python3 and pip:
#   make demo   — the main job        make test — the whole test suite
# `make setup` (idempotent) creates .venv and installs dinokit into it; both targets depend on it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch; on a CUDA machine pre-install the wheel you want into .venv (see README)
# and setup keeps it, since a torch that satisfies `torch>=2.4` is never replaced.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,examples]"
	@touch $(STAMP)

demo: setup
	$(BIN)/dinokit demo

test: setup
	$(BIN)/ruff check dinokit tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check dinokit tests benchmarks

bench: setup
	$(BIN)/python benchmarks/backbone_throughput.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
