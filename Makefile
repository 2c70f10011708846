# Two entry points (see README.md): `make demo` and `make test`.
# Each creates its own virtual environment in .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest venv clean bench manifests

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/kubeguard demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

pytest: $(STAMP)
	$(BIN)/pytest -q

# Regenerate deploy/ and the chart's generated files from the code (a test fails on drift).
manifests: $(STAMP)
	$(BIN)/kubeguard manifests --write-defaults .

# Benchmarks print figures (minutes; not part of make test).
bench: $(STAMP)
	$(BIN)/python bench/bench_admission.py --handler all
	$(BIN)/python bench/bench_sim.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
