# Two commands set everything up on a machine that has make and python3 (≥ 3.10, with venv; Debian: python3-venv):
#   make demo   — the main job        make test — the whole test suite
# `make setup` (idempotent) creates .venv and installs dinokit into it, which is all `make demo` needs;
# `make setup-test` adds the test extra (transformers, faiss, onnx, …) that `make test` needs.
# Keeping them apart saves the demo about a minute of installing on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The demo's set-up skips pip's byte-compiling of every installed module (some 3000 in torch): it was 40 s of
# the demo's ten minutes on two cores, and Python compiles what it imports when it first imports it (at every
# start when PYTHONDONTWRITEBYTECODE is set: about 3 s for torch). The test set-up compiles everything once,
# since the suite's processes would otherwise compile the same modules again and again (70 s more per run).
PIP    := $(BIN)/pip install --quiet --no-compile
# The CPU wheel of torch; on a CUDA machine pre-install the wheel you want into .venv (see README)
# and setup keeps it, since a torch that satisfies `torch>=2.4` is never replaced.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: setup setup-test demo test lint bench clean

setup: $(STAMP)

setup-test: $(TEST_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) "$(TORCH)"
	$(PIP) -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e ".[test]"
	@# a file or two of torch's own tests use newer syntax and do not compile: harmless, hence the "-"
	-@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1
	@touch $(TEST_STAMP)

demo: setup
	$(BIN)/dinokit demo

test: setup-test
	$(BIN)/ruff check dinokit tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup-test
	$(BIN)/ruff check dinokit tests benchmarks

bench: setup-test
	$(BIN)/python benchmarks/backbone_throughput.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
