#!/usr/bin/env bash
# Install granularity and what it needs on a fresh machine (idempotent). Two routes:
#  - root with apt-get (Debian/Ubuntu; CI): the Debian packages of the Fashion-MNIST data set and
#    the WordNet 3.0 database (offline sources of the default study and the WordNet
#    hierarchies), and Chromium (headless browser for the report test).
#  - no root or no apt-get (a cluster login node, a conda env, a Mac, a container): the Debian
#    packages are skipped with a note. Fashion-MNIST is then downloaded from the official sources
#    on first use (MD5-checked); WordNet 3.0 comes from NLTK's data package
#    (`python -m nltk.downloader wordnet`, run here when GRANULARITY_NLTK_WORDNET=1) or a folder
#    named by GRANULARITY_WORDNET. `granularity doctor` then lists what is still missing.
#    Outside a virtual environment, as a non-root user who cannot write to the interpreter's
#    site-packages, pip installs with --user.
#  - PyTorch: the CPU build 2.13.0 when no torch is installed yet (a bare `torch` requirement
#    would pull a multi-GB CUDA build here). If torch is already installed (a GPU user's CUDA
#    build) it is kept. Set GRANULARITY_TORCH_SPEC to choose another spec.
#  - the package itself, editable, with the extras given in GRANULARITY_EXTRAS.
# Environment: PYTHON (interpreter, default python3), GRANULARITY_EXTRAS (default test,ray,inat),
# GRANULARITY_NO_APT=1 (skip apt even as root), GRANULARITY_PIP_ARGS (extra pip arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${GRANULARITY_EXTRAS:-test,ray,inat}
read -r -a PIP_ARGS <<<"${GRANULARITY_PIP_ARGS:-}"

apt_route=0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -z "${GRANULARITY_NO_APT:-}" ]; then
  apt_route=1
  need=""
  for p in dataset-fashion-mnist wordnet-base wordnet-sense-index chromium; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  if [ -n "$need" ]; then
    echo "setup: apt-get install$need"
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  fi
else
  echo "setup: no apt route (not root, no apt-get, or GRANULARITY_NO_APT): Debian packages skipped;"
  echo "setup:   Fashion-MNIST downloads on first use; WordNet: $PY -m nltk.downloader wordnet"
  echo "setup:   (or GRANULARITY_NLTK_WORDNET=1 here, or GRANULARITY_WORDNET=<folder>); see docs/install.md"
fi

# --user only where it is needed and allowed: not in a venv/conda env, not root, site not writable
if [ "$("$PY" -c 'import os, sys, sysconfig; print(int(sys.prefix == sys.base_prefix and "CONDA_PREFIX" not in os.environ and os.geteuid() != 0 and not os.access(sysconfig.get_paths()["purelib"], os.W_OK)))')" = 1 ]; then
  PIP_ARGS+=(--user)
  echo "setup: site-packages not writable and no virtual environment: installing with pip --user"
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing ${GRANULARITY_TORCH_SPEC:-torch==2.13.0} (CPU build on this platform)"
  "$PY" -m pip install -q ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "${GRANULARITY_TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} -e ".[${EXTRAS}]"
if [ "$apt_route" = 0 ] && [ -n "${GRANULARITY_NLTK_WORDNET:-}" ]; then
  echo "setup: $PY -m nltk.downloader -q wordnet (NLTK's WordNet 3.0 data package, into ~/nltk_data)"
  "$PY" -m nltk.downloader -q wordnet
fi
echo "setup: done ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
if [ "$apt_route" = 0 ]; then
  "$PY" -m granularity doctor || echo "setup: run the fix lines above for the parts you need"
fi
