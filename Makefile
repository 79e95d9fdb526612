# devide — the two commands a newcomer needs: `make demo` and `make test`.
# Everything goes into ./.venv (created with Python 3.11 if available). pip, not uv/poetry: pip finds the
# local CPU build of torch==2.13.0 on our machines instead of downloading a multi-GB CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PIPELINE ?= pipelines/demo.yaml
# Every install goes through the committed lock (exact versions of every dependency, Python 3.11, CPU torch):
# a release published today cannot break `make test` or `make demo`. `make lock` regenerates it.
LOCK ?= requirements-lock.txt
INSTALL := $(PIP) install --quiet --constraint $(LOCK)
LOCK_TOOLS ?= .venv-lock
PIP_TOOLS ?= pip-tools==7.7.0
LATEST_VENV ?= .venv-latest
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help venv install install-dev install-llm demo test test-fast test-latest lock lint bench clean

help:
	@echo "make demo      create .venv, install, run $(PIPELINE) end to end on the embedded default"
	@echo "make test      create/update .venv with dev dependencies and run the test suite"
	@echo "make test-fast the suite without tests marked slow"
	@echo "make test-latest  a separate venv ($(LATEST_VENV)) with the NEWEST allowed versions (ignoring the lock),"
	@echo "               the fast suite, and which packages differ from the lock: the drift check"
	@echo "make lock      regenerate $(LOCK) with pip-compile (keeps pins; UPGRADE=1 to move everything to the newest)"
	@echo "make lint      ruff"
	@echo "make bench     run every benchmark in benchmarks/ (writes JSON to benchmarks/results/)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(BIN)/python

# Reinstall whenever pyproject.toml or the lock changes (stamp files). torch first, alone: on our machines pip
# takes the local CPU wheel; GPU users install their CUDA build of the same version before `make` and it is kept
# (the lock pins torch==2.13.0 without a local label, which 2.13.0+cu128 satisfies).
$(VENV)/.stamp-base: pyproject.toml $(LOCK) | $(BIN)/python
	$(INSTALL) torch==2.13.0
	$(INSTALL) -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(LOCK) $(VENV)/.stamp-base
	$(INSTALL) -e ".[dev]"
	touch $@

# llama-cpp-python compiles from source the first time (~8 min on 2 cores); pip caches the wheel after.
$(VENV)/.stamp-llm: pyproject.toml $(LOCK) $(VENV)/.stamp-base
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(INSTALL) -e ".[llm-local]"
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

# The drift check: what the next user who installs devide as a library (pyproject ranges, no lock) gets today.
# Fails when the newest allowed releases break the fast suite; .ci/run reports that loudly without failing CI.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/python .ci/lock_drift.py $(LOCK)
	$(LATEST_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

# pip-compile (pip-tools) in its own small venv. The local label of the CPU wheel (torch==2.13.0+cpu) is removed
# so that a CUDA build of the same version satisfies the lock.
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || ($(PYTHON) -m venv $(LOCK_TOOLS) && \
		$(LOCK_TOOLS)/bin/python -m pip install --quiet "$(PIP_TOOLS)")
	$(LOCK_TOOLS)/bin/pip-compile --quiet --all-extras --strip-extras --no-emit-index-url --no-emit-find-links \
		$(if $(UPGRADE),--upgrade) --output-file $(LOCK) pyproject.toml
	sed -i -E 's/^(torch==[0-9.]+)[+][A-Za-z0-9.]+/\1/' $(LOCK)

lint: install-dev
	$(BIN)/ruff check devide crawlers knowledge pipelines tests benchmarks

bench: install
	@for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf artifacts .pytest_cache $(LATEST_VENV)
