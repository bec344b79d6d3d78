# `make demo` and `make test` build .venv from requirements.lock on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo demo-speech test clean-venv

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/surfsep demo --out runs/demo

demo-speech: $(STAMP)
	$(VENV)/bin/surfsep demo speech --out runs/demo-speech

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n auto

clean-venv:
	rm -rf $(VENV)
