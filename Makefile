# Two commands: `make serve-example` (set up, then serve the bundled digits model on an embedded
# local Ray) and `make test` (set up, then run the whole test suite). Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve-example test lint audit lock unit fuzz bench bench-smoke clean

# Installs exactly the versions requirements.lock pins (constraints: what `make audit` audited);
# a dependency the lock does not pin yet installs at pip's choice, and the audit reports it.
$(STAMP): pyproject.toml tests/support/clients.txt requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock --upgrade pip setuptools
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r tests/support/clients.txt
	touch $(STAMP)

setup: $(STAMP)

serve-example: $(STAMP)
	$(BIN)/aspire serve --model_name=digits --model_base_path=examples/models/digits \
		--rest_api_port=8501 --port=8500 --monitoring_config_file=examples/monitoring_config.txt

test: lint audit
	$(BIN)/python -m pytest -q -rs --durations=25 tests

# ruff (lint, and the format check) over everything, mypy over the core, the policies, the
# config parsers and the manager's inputs (pyproject.toml); a finding fails `make test`
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The locked dependencies against PyPI's vulnerability service; a vulnerability not listed in
# security/accepted-vulnerabilities.txt fails it (security/audit.py; docs/testing.md).
audit: $(STAMP)
	$(BIN)/python security/audit.py

# requirements.lock from the venv, after installing the dev extras and the test clients without
# the lock (installed versions stay; `$(BIN)/pip install -U NAME` first to move one). Run it after
# changing a dependency, then `make audit`.
lock:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r tests/support/clients.txt
	{ echo "# Written by \`make lock\` (pip freeze of the venv): every distribution \`make setup\`"; \
	  echo "# installs, pinned; the constraints it installs with, and what \`make audit\` audits."; \
	  $(BIN)/python -m pip freeze --all --exclude-editable; } > requirements.lock
	touch $(STAMP)

# Each fuzz target (tests/fuzz/targets.py) for FUZZ_SECONDS, one after another; an input that
# fails one is written to tests/fuzz/regressions/TARGET/ and the run stops (docs/testing.md).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= $(notdir $(wildcard tests/fuzz/corpus/*))
fuzz: $(STAMP)
	@for target in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$target for $(FUZZ_SECONDS) s"; \
	  $(BIN)/python -m tests.fuzz.run $$target --seconds $(FUZZ_SECONDS) || exit 1; \
	done

bench: $(STAMP)
	$(BIN)/python bench/suite.py

bench-smoke: $(STAMP)
	$(BIN)/python -m pytest -q -m bench tests/integration/test_bench_smoke.py

clean:
	rm -rf $(VENV) .pytest_cache
