# Two commands do all the set-up: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
# torch is pinned and installed first: an unpinned torch pulls several GB of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: install demo test test-all lint format bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) -m dql.demo

# The fast tier: every test not marked slow (learning tests, SAC training, full-length runs).
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow"

# Both tiers and the linter: what CI runs (.ci/run). It adds the ray extra, so the Ray backend's
# tests (a real `ray start --head` cluster) run rather than skip.
test-all: $(RAY_STAMP) lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -rs --durations=25

$(RAY_STAMP): $(STAMP)
	$(PIP) install -q -e ".[dev,ray]"
	touch $(RAY_STAMP)

lint: install
	$(VENV)/bin/ruff check dql baselines experiments tests
	$(VENV)/bin/ruff format --check dql baselines experiments tests

format: install
	$(VENV)/bin/ruff format dql baselines experiments tests
	$(VENV)/bin/ruff check --fix dql baselines experiments tests

bench: install
	$(PY) experiments/bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache
