#!/usr/bin/env bash
# Run every reproduce script at one profile (default: paper where a GPU or Slurm is present, else cpu).
#   bash reproduce/all.sh [--profile smoke|cpu|paper] [--executor auto|slurm|local|debug] [other flags]
#   bash reproduce/all.sh --from-cache      # only redraw figures and results/REPORT.md from cached CSVs
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
# The authors' KNOWN weights are not in this repository: they are downloaded into ~/.cache/know/official when
# online. Offline, point KNOW_WEIGHTS_DIR at a copy (a reference checkout beside this repo is used if present).
if [ -z "${KNOW_WEIGHTS_DIR:-}" ] && [ -f ../shared/reference/known_keras/KNOWN_Conv.h5 ]; then
  export KNOW_WEIGHTS_DIR=$(cd ../shared/reference/known_keras && pwd)
fi
if [ -z "${KNOW_WNN_WEIGHTS_DIR:-}" ] && [ -f ../shared/reference/wnn_keras/NWNN_Conv_13.h5 ]; then
  export KNOW_WNN_WEIGHTS_DIR=$(cd ../shared/reference/wnn_keras && pwd)
fi
if [ "${1:-}" = "--from-cache" ]; then
  "$PY" -m know figures
  exec "$PY" reproduce/report.py
fi
for s in reproduce/table*.py reproduce/figure*.py; do
  echo "=== $s $*"
  "$PY" "$s" "$@"
done
"$PY" reproduce/report.py
