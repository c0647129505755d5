# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench soak install clean cluster-test failover-soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# `make test ARGS="tests/results -x"` runs a selection; the coverage floor applies to a
# full run only.
test: $(STAMP)
	$(BIN)/coverage run -m pytest -q $(ARGS)
	$(BIN)/coverage report $(if $(strip $(ARGS)),--fail-under=0)

# The tests on 3-node RabbitMQ clusters of their own (about a minute; also in `make test`).
cluster-test: $(STAMP)
	$(BIN)/pytest -q -m cluster

lint: $(STAMP)
	$(BIN)/ruff check rabbitworker tests examples benchmarks scripts
	$(BIN)/ruff format --check rabbitworker tests examples benchmarks scripts
	$(BIN)/mypy --strict rabbitworker tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py $(ARGS)

failover-soak: $(STAMP)
	$(BIN)/python benchmarks/failover_soak.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
