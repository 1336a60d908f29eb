# Two entry points (see README): `make run` and `make test`. Both create .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(BIN)/.compat: $(BIN)/.installed
	GPTQMODEL_CPU_WORKERS=2 $(BIN)/pip install -q -e '.[test,compat]'
	# TGI's Python client pins huggingface-hub<1.0 (it works with 1.x+); its deps come from the extra.
	$(BIN)/pip install -q --no-deps 'text-generation==0.7.0'
	touch $@

.PHONY: setup run test lint clean
setup: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/python examples/demo.py

test: $(BIN)/.compat
	$(BIN)/ruff check src tests benchmarks
	GPTQMODEL_CPU_WORKERS=2 $(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) out
