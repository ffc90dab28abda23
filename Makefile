# Everything a fresh machine needs: `make run` and `make test` create the virtual
# environment on first use, so no other set-up step exists. `make run` installs the runtime
# alone; the test and lint tooling (the `dev` extra) comes with `make install`, `test`,
# `lint` and `bench`.
PYTHON  ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
STAMP   := $(VENV)/.installed

.PHONY: install run test test-fault lint bench mutate clean

install: $(STAMP)

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) is required"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(RUNTIME) $(STAMP)

run: $(RUNTIME)
	$(BIN)/noetl-runtime run tests/fixtures/playbooks/hello_world/hello_world.yaml

# The browser tests use Debian's Chromium: installed here when missing and run as root.
test: install
	$(BIN)/python -m tests.browser.chromium
	$(BIN)/python -m pytest

# Every fault drill, the long variants included.
test-fault: install
	$(BIN)/python -m pytest tests/fault -m "fault_long or not fault_long" -s

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The contract's figures, each with its ratio to tests/bench/baseline.json; the extra
# workloads run with `noetl-runtime bench --workload wide_loop --workload sink`.
bench: install
	$(BIN)/noetl-runtime bench

# Mutation testing (mutmut, configured in pyproject.toml) of the engine, rendering and
# plugins against the unit tests; slow, so never in CI. MUTANTS narrows it to mutant names:
#   make mutate MUTANTS='noetl.engine.iteration.* plugins.http.x__retry_after*'
MUTANTS ?=
MUTATE_JOBS ?= 2
mutate: install
	$(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(BIN)/mutmut export-cicd-stats
	$(BIN)/python -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); \
	  k, v = s["killed"] + s["timeout"], s["survived"]; \
	  print(f"mutation score {k}/{k + v} = {100 * k / max(k + v, 1):.1f}% (survivors: mutmut results)")'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants
