# seatcast — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Every dependency and extra (test, embedded, bench, dev), pinned with hashes: `make lock`.
LOCK := requirements/lock.txt
EXTRAS := test,embedded,bench,dev
PYTEST_ARGS ?=
# e.g. LOCK_ARGS="--upgrade-package uvicorn", or LOCK_ARGS=--upgrade for every package.
LOCK_ARGS ?=

.PHONY: install lock run test test-long lint format bench bench-quick bench-api clean

# Exactly the lock (hash-checked), then seatcast itself, built by the lock's setuptools.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv with seatcast and every extra, exactly as locked

lock: ## regenerate requirements/lock.txt from pyproject.toml's ranges (keeps pins still in range)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m piptools --version >/dev/null 2>&1 || $(PY) -m pip install --quiet pip-tools
	CUSTOM_COMPILE_COMMAND="make lock" $(PY) -m piptools compile --quiet --generate-hashes \
		--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		--extra $(EXTRAS) --output-file $(LOCK) $(LOCK_ARGS) pyproject.toml

run: $(STAMP) ## the whole local stack: embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set
	$(PY) -m shared.toolbox.cli run

test: $(STAMP) ## the whole suite against real PostgreSQL and Redis; skips listed with reasons
	$(PY) -m pytest -rs $(PYTEST_ARGS)

test-long: $(STAMP) ## the suite with the long soak and fault variants
	$(PY) -m pytest -rs --long $(PYTEST_ARGS)

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
