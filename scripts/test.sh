#!/usr/bin/env bash
# The README's test command: install qfarm with its test and TVM extras into .venv (no torch there),
# Debian's chromium for the browser tests when it is missing, and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,tvm]'
if [ ! -x "${QFARM_CHROMIUM:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  else
    echo "scripts/test.sh: the browser tests need Debian's chromium: run 'apt-get install -y chromium' as root" >&2
    exit 1
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
