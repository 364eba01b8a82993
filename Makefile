# The README's two commands: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test unit integration browser screenshots lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/ragtune demo

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

unit: install
	$(VENV)/bin/pytest -q

integration: install
	$(VENV)/bin/pytest -q -m integration

# The web app in a real headless Chromium (Debian's chromium + chromium-driver).
browser: install
	$(VENV)/bin/pytest -q -m browser

# Retake docs/img/ screenshots of the web app (the browser tests take them).
screenshots: install
	RAGTUNE_DOCS_SCREENSHOTS=1 $(VENV)/bin/pytest -q -m browser

test: lint unit integration browser

bench: install
	$(PY) bench/retrieval.py
	$(PY) bench/fusion.py
	$(PY) bench/tune.py
	$(PY) bench/demo.py
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
