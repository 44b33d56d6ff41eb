#!/usr/bin/env bash
# Install granularity and what it needs on a fresh machine (idempotent).
#  - Debian packages (when apt-get exists and we are root): the Fashion-MNIST data set and the
#    WordNet 3.0 database (offline sources of the default study and the WordNet hierarchy),
#    Chromium (headless browser for the report test).
#  - PyTorch: the CPU build 2.13.0 when no torch is installed yet (a bare `torch` requirement
#    would pull a multi-GB CUDA build here). If torch is already installed (a GPU user's CUDA
#    build) it is kept. Set GRANULARITY_TORCH_SPEC to choose another spec.
#  - the package itself, editable, with the extras given in GRANULARITY_EXTRAS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${GRANULARITY_EXTRAS:-test,ray,inat}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -z "${GRANULARITY_NO_APT:-}" ]; then
  need=""
  for p in dataset-fashion-mnist wordnet-base wordnet-sense-index chromium; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  if [ -n "$need" ]; then
    echo "setup: apt-get install$need"
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  fi
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing ${GRANULARITY_TORCH_SPEC:-torch==2.13.0} (CPU build on this platform)"
  "$PY" -m pip install -q "${GRANULARITY_TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -e ".[${EXTRAS}]"
echo "setup: done ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
