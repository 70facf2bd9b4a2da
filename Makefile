# Two entry points: `make test` (what CI runs) and `make all` (bash reproduce/all.sh).
# Both install what they need first (idempotent; seconds when already installed).
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup test all figures clean-venv slurm-start slurm-stop

setup:
	bash scripts/setup.sh

# The Slurm tests (tests/test_slurm.py, tests/test_faults.py) run against a real single-node cluster, started here
# where the machine allows it (root and apt, as on CI); elsewhere they are skipped unless a cluster is up (and fail
# under $$CI).
test: setup
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  bash scripts/slurm-local.sh start || echo "[test] WARNING: the local Slurm cluster did not start"; \
	else echo "[test] not root with apt-get: Slurm tests run only if a cluster is up (scripts/slurm-local.sh)"; fi
	KNOW_WEIGHTS_DIR=$${KNOW_WEIGHTS_DIR:-$(abspath ../shared/reference/known_keras)} \
	KNOW_WNN_WEIGHTS_DIR=$${KNOW_WNN_WEIGHTS_DIR:-$(abspath ../shared/reference/wnn_keras)} \
	$(PY) -m pytest -q --durations=15 tests

all: setup
	bash reproduce/all.sh

figures: setup
	$(PY) -m know figures

slurm-start:
	bash scripts/slurm-local.sh start

slurm-stop:
	bash scripts/slurm-local.sh stop

clean-venv:
	rm -rf .venv
