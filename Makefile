# Two entry points: `make test` (what CI runs) and `make all` (bash reproduce/all.sh).
# Both install what they need first (idempotent; seconds when already installed).
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup test all figures clean-venv

setup:
	bash scripts/setup.sh

test: setup
	KNOW_WEIGHTS_DIR=$${KNOW_WEIGHTS_DIR:-$(abspath ../shared/reference/known_keras)} \
	KNOW_WNN_WEIGHTS_DIR=$${KNOW_WNN_WEIGHTS_DIR:-$(abspath ../shared/reference/wnn_keras)} \
	$(PY) -m pytest -q tests

all: setup
	bash reproduce/all.sh

figures: setup
	$(PY) -m know figures

clean-venv:
	rm -rf .venv
