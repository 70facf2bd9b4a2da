#!/usr/bin/env bash
# The prepared GPU check: at most 8 minutes, one JSON line per measurement (benchmarks/gpu_check.py says what).
# On a machine without a GPU it runs too, and the GPU-only lines say why they were skipped.
#   bash benchmarks/gpu_check.sh [--skip-rehearsal]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
