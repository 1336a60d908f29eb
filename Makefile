# Two entry points (see README): `make run` and `make test`. Both create .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# llama-cpp-python (the gguf extra: K-quant GGUF export, GGUF eval, the `llamacpp` tests) is compiled from source
# for this CPU's features, never -march=native or AMX (camelid/runtime/llamacpp_build.py says why). The build
# takes ~5 min on 2 quiet cores, so only `make test` needs it; `make run` and `make setup` do not. --no-cache-dir:
# pip's wheel cache ignores CMAKE_ARGS and would reuse a wheel built for another CPU. LLAVA_BUILD=OFF skips
# libmtmd (multimodal; llama-cpp-python loads it only for its vision chat handlers), a fifth of the build.
LLAMA_CPP ?= llama-cpp-python==0.3.36

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

$(BIN)/.gguf: $(BIN)/.installed
	args="$$($(BIN)/python -m camelid.runtime.llamacpp_build)" && CMAKE_ARGS="$$args -DLLAVA_BUILD=OFF" \
		$(BIN)/pip install -q --no-cache-dir --no-binary llama-cpp-python '$(LLAMA_CPP)'
	$(BIN)/pip install -q -e '.[gguf]'
	touch $@

.PHONY: setup run test lint clean
setup: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/python examples/demo.py

test: $(BIN)/.compat $(BIN)/.gguf
	$(BIN)/ruff check src tests benchmarks
	GPTQMODEL_CPU_WORKERS=2 $(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) out
