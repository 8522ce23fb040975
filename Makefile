# Two entry points: `make demo` (set up, then run the main job against the simulator into the
# embedded SQLite database) and `make test` (set up, then lint, type-check and run every test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/qianfan-etl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/qianfan-etl
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The demo ends with the report page, so it installs the report extra too.
$(VENV)/.report-deps: $(BIN)/qianfan-etl
	$(BIN)/pip install --quiet -e '.[report]'
	touch $@

demo: $(VENV)/.report-deps
	$(BIN)/qianfan-etl demo

lint: $(VENV)/.test-deps
	$(BIN)/ruff check etl tests migrations bench
	$(BIN)/ruff format --check etl tests migrations bench
	$(BIN)/mypy

# Four workers on two cores: most of a test's time is spent waiting on the processes, the
# simulator and the databases it drives (README, Two commands).
test: lint
	$(BIN)/pytest -n 4

bench: $(VENV)/.test-deps
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) qianfan_demo.db* qianfan-report.html .pytest_cache .mypy_cache .ruff_cache
