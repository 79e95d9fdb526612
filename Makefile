# devide — the two commands a newcomer needs: `make demo` and `make test`.
# Everything goes into ./.venv (created with Python 3.11 if available). pip, not uv/poetry: pip finds the
# local CPU build of torch==2.13.0 on our machines instead of downloading a multi-GB CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PIPELINE ?= pipelines/demo.yaml
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help venv install install-dev install-llm demo test test-fast lint bench clean

help:
	@echo "make demo      create .venv, install, run $(PIPELINE) end to end on the embedded default"
	@echo "make test      create/update .venv with dev dependencies and run the test suite"
	@echo "make test-fast the suite without tests marked slow"
	@echo "make lint      ruff"
	@echo "make bench     run every benchmark in benchmarks/ (writes JSON to benchmarks/results/)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(BIN)/python

# Reinstall whenever pyproject.toml changes (stamp files).
$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	$(PIP) install --quiet -e ".[dev]"
	touch $@

# llama-cpp-python compiles from source the first time (~8 min on 2 cores); pip caches the wheel after.
$(VENV)/.stamp-llm: pyproject.toml $(VENV)/.stamp-base
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --quiet -e ".[llm-local]"
	touch $@

install: $(VENV)/.stamp-base
install-dev: $(VENV)/.stamp-dev
install-llm: $(VENV)/.stamp-llm

demo: install install-llm
	$(BIN)/devide run $(PIPELINE)

test: install-dev
	$(BIN)/python -m pytest -q

test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not slow"

lint: install-dev
	$(BIN)/ruff check devide crawlers knowledge pipelines tests benchmarks

bench: install
	@for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf artifacts .pytest_cache
