#!/usr/bin/env bash
# `make matrix`: the test suite on every Python 3.10-3.13 present, each in a fresh venv.
#
# For each version: find an interpreter (python3.X on PATH, a pyenv version, or `uv python
# find`), create a fresh venv in $MATRIX_DIR/py3.X (no system site-packages, no root), install
# torch, then the package itself NOT editable (`pip install ".[test,inat]"`, so the suite runs
# against the installed wheel), and run, from another folder for the commands:
#   granularity doctor; granularity simulate --preset quick (tiny); python -m pytest -q
# One interpreter at a time, under `nice`. A missing interpreter is reported, not an error.
# Summary lines go to $MATRIX_DIR/summary.txt; the full logs to $MATRIX_DIR/py3.X.log.
#
# torch: $MATRIX_TORCH (default torch==2.13.0, the project's pinned build; on Linux with the
# project's wheel folder the CPU build). Where that cannot be installed for an interpreter (the
# only 2.13.0 wheel on PyPI for Linux is the CUDA build, whose CUDA 13 libraries PyPI may lack),
# $MATRIX_TORCH_FALLBACK (default torch==2.6.0, within the supported torch>=2.2) is used and the
# summary says which torch each interpreter got.
#
#   MATRIX_PYTHONS="3.10 3.11 3.12 3.13"  MATRIX_DIR=.matrix  MATRIX_EXTRAS=test,inat
#   MATRIX_PYTEST_ARGS="-x"  (extra pytest arguments, e.g. a test folder)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSIONS=${MATRIX_PYTHONS:-"3.10 3.11 3.12 3.13"}
DIR=${MATRIX_DIR:-$ROOT/.matrix}
EXTRAS=${MATRIX_EXTRAS:-test,inat}
TORCH=${MATRIX_TORCH:-torch==2.13.0}
FALLBACK=${MATRIX_TORCH_FALLBACK:-torch==2.6.0}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
SUMMARY=$DIR/summary.txt
: >"$SUMMARY"
unset PYTHONPATH  # the venv must use its own installed package, not a checkout's src

find_python() {  # prints a working interpreter for version $1, or nothing
  local v=$1 cand
  for cand in "python$v" "$HOME"/.pyenv/versions/"$v".*/bin/"python$v"; do
    if "$cand" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$v'.split('.')))" \
      >/dev/null 2>&1; then
      command -v "$cand" 2>/dev/null || echo "$cand"
      return
    fi
  done
  if command -v uv >/dev/null 2>&1; then
    uv python find "$v" 2>/dev/null || true
  fi
}

run_one() {  # $1 version, $2 interpreter, $3 log
  local v=$1 py=$2 env=$DIR/py$1 work
  rm -rf "$env"
  nice -n 5 "$py" -m venv "$env" || return 1
  "$env/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ! nice -n 5 "$env/bin/python" -m pip install -q "$TORCH"; then
    echo "matrix: $TORCH cannot be installed for Python $v here; trying $FALLBACK"
    nice -n 5 "$env/bin/python" -m pip install -q "$FALLBACK" || return 1
  fi
  nice -n 5 "$env/bin/python" -m pip install -q ".[${EXTRAS}]" || return 1
  work=$(mktemp -d)
  (cd "$work" && "$env/bin/granularity" doctor) || echo "matrix: doctor exit $? (missing pieces listed above)"
  (cd "$work" && nice -n 5 "$env/bin/granularity" simulate --preset quick --seeds 2 \
    --set train.steps=20 --set transfer.n_test=200 --out "$work/quick") || return 1
  rm -rf "$work"
  # shellcheck disable=SC2086
  nice -n 5 "$env/bin/python" -m pytest -q -p no:cacheprovider ${MATRIX_PYTEST_ARGS:-}
}

status=0
for v in $VERSIONS; do
  py=$(find_python "$v")
  if [ -z "$py" ]; then
    echo "py$v: MISSING (no python$v on PATH, in ~/.pyenv/versions or from uv)" | tee -a "$SUMMARY"
    continue
  fi
  log=$DIR/py$v.log
  echo "matrix: Python $v ($py) -> $log"
  start=$(date +%s)
  if run_one "$v" "$py" >"$log" 2>&1; then result=PASS; else result=FAIL; status=1; fi
  torch=$("$DIR/py$v/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null || echo none)
  last=$(grep -E "^(=+ )?[0-9]+ (passed|failed)|^[0-9]+ failed, " "$log" | tail -1)  # pytest's summary line
  echo "py$v: $result ($("$py" -V 2>&1), torch $torch, $(($(date +%s) - start)) s): $last" | tee -a "$SUMMARY"
done
exit $status
