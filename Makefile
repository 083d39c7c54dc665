# seatcast — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run test test-long lint format bench bench-quick bench-api clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,embedded,bench,dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with seatcast and every extra

run: $(STAMP) ## the whole local stack: embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set
	$(PY) -m shared.toolbox.cli run

test: $(STAMP) ## the whole suite against real PostgreSQL and Redis
	$(PY) -m pytest $(PYTEST_ARGS)

test-long: $(STAMP) ## the suite with the long soak and fault variants
	$(PY) -m pytest --long $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) ## fan-out benchmark, a few minutes; results under bench/results/
	$(PY) -m bench

bench-quick: $(STAMP) ## the same in under a minute
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/results

bench-api: $(STAMP) ## bookings per second through the booking API (50 clients, 10 s)
	$(PY) -m bench.bookings
