# Everything runs from the project's own virtualenv and node_modules; `make setup`
# builds them once and stamps each step, so reruns only redo what changed.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Pinned and installed first: left to the resolver, torch pulls a multi-GB CUDA build.
TORCH_SPEC := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test dev lint bench soak

setup: $(VENV)/.stamp-python-deps node_modules/.stamp-npm

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-torch: | $(PY)
	$(PIP) install '$(TORCH_SPEC)'
	touch $@

# llama-cpp-python compiles llama.cpp on install. Its default, -march=native, takes in
# AMX on recent Xeons, and there prompt decoding segfaults (0.3.36); a portable build
# (AVX2, FMA) does not. The wheel is kept outside the venv, keyed by those flags, so a
# fresh venv on the same machine skips the four-minute compile.
LLAMA_SPEC := llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
LLAMA_WHEELS := $(HOME)/.cache/oracle/wheels/llama-native-off

$(VENV)/.stamp-llama: | $(VENV)/.stamp-torch
	if ! ls $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel --no-deps --no-cache-dir \
			-w $(LLAMA_WHEELS) '$(LLAMA_SPEC)'; \
	fi
	$(PIP) install --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl
	touch $@

$(VENV)/.stamp-python-deps: pyproject.toml $(VENV)/.stamp-torch $(VENV)/.stamp-llama
	$(PIP) install -e '.[dev]'
	touch $@

$(VENV)/.stamp-bench-deps: pyproject.toml $(VENV)/.stamp-python-deps
	$(PIP) install -e '.[dev,bench]'
	touch $@

node_modules/.stamp-npm: package.json $(wildcard package-lock.json)
	if [ -f package-lock.json ]; then npm ci; else npm install; fi
	touch $@

# the static checks first: a layering or typing slip fails as fast as a broken test;
# the bench extra too, since tests/bench runs every benchmark once in its smoke mode
test: setup $(VENV)/.stamp-bench-deps lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# three nodes, twenty requests, every fault at random: a few minutes
soak: setup
	$(VENV)/bin/pytest -s tests/faults/test_soak.py

dev: setup
	$(VENV)/bin/oracle dev

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup $(VENV)/.stamp-bench-deps
	@set -e; for script in bench/[!_]*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(PY) "$$script"; \
	done
