# The README's two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test setup lint bench

$(BIN)/agent-sre: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/agent-sre

run: setup
	$(BIN)/agent-sre run

test: setup
	$(BIN)/ruff check pipeline receivers processors exporters tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/ingest.py
