# make run: the default experiment; make test: the whole test suite. Both create .venv if absent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-servers lint venv clean

run: $(STAMP)
	$(PY) workflows/fedavg.py $(ARGS)

# The tests start real servers; the first `make test` installs them (scripts/test-servers.sh).
test: test-servers $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-servers:
	@scripts/test-servers.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

venv: $(STAMP)

# Re-installs when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
