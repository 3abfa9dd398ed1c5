# One-command setup and the test suite. `make setup` is idempotent: it reinstalls only when
# pyproject.toml changed since the last successful install.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-all lint demo bench image image-test clean

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

# The container image (docker, or podman without a daemon; see docker/README.md) and its smoke test.
image:
	docker/build.sh eit-manifold

image-test: setup
	docker/smoke_test.sh eit-manifold

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
