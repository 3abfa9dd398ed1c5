# One-command setup and the test suite. `make setup` is idempotent: it reinstalls only when
# pyproject.toml changed since the last successful install.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-all lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/find_python.sh
	@test -x $(PY) || $$(scripts/find_python.sh) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/eit-manifold demo --seed 0 --out results/demo

test: setup
	$(VENV)/bin/pytest -m "not slow" -q --timeout=900

test-all: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/forward.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
