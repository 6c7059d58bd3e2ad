# One way to run everything: the README and .ci/run call these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo run test lint typecheck unit screenshot

$(BIN)/subledger: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(BIN)/subledger

demo: $(BIN)/subledger
	$(BIN)/subledger demo

run: $(BIN)/subledger
	$(BIN)/subledger serve

lint: $(BIN)/subledger
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/subledger
	$(BIN)/mypy

unit: $(BIN)/subledger
	$(BIN)/python -m pytest

test: lint typecheck unit

# The README's picture of the dashboard, taken by the browser test from the demo.
screenshot: $(BIN)/subledger
	SUBLEDGER_README_SCREENSHOT=docs/images/dashboard.png $(BIN)/python -m pytest -q \
		tests/webapp/test_browser.py::test_the_demo_dashboard_shows_the_apis_mrr
