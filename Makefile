# `make demo`: set up .venv and run the pipeline on the built-in synthetic demo (offline).
# `make test`: set up .venv with the test extras and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.py $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.py $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/kinetics-prep --dataset demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

clean:
	rm -rf data/demo build *.egg-info
