# Two commands: `make serve-example` (set up, then serve the bundled digits model on an embedded
# local Ray) and `make test` (set up, then run the whole test suite). Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve-example test lint unit bench bench-smoke clean

$(STAMP): pyproject.toml tests/support/clients.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r tests/support/clients.txt
	touch $(STAMP)

setup: $(STAMP)

serve-example: $(STAMP)
	$(BIN)/aspire serve --model_name=digits --model_base_path=examples/models/digits \
		--rest_api_port=8501 --port=8500 --monitoring_config_file=examples/monitoring_config.txt

test: lint
	$(BIN)/python -m pytest -q -rs tests

# ruff (lint, and the format check) over everything, mypy over the core, the policies, the
# config parsers and the manager's inputs (pyproject.toml); a finding fails `make test`
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python bench/suite.py

bench-smoke: $(STAMP)
	$(BIN)/python -m pytest -q -m bench tests/integration/test_bench_smoke.py

clean:
	rm -rf $(VENV) .pytest_cache
