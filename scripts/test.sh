#!/usr/bin/env bash
# The README's test command: install qfarm with its test and TVM extras into .venv (no torch there)
# and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,tvm]'
exec .venv/bin/python -m pytest -q "$@"
