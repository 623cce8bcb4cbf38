#!/usr/bin/env bash
# The farm demo: a coordinator and 2 agents on loopback (separate processes), one campaign across
# them, the Pareto front printed, everything shut down cleanly (also on Ctrl-C or an error).
#   deploy/farm-demo.sh [MODEL.onnx] [IMAGE_DIR] [EXTRA coordinator tune ARGS...]
# Defaults: models/effnet_lite0.onnx and tests/fixtures/imagenet-100. Output in demo-out/farm/.
# The coordinator serves its dashboard on loopback while the campaign runs; QFARM_DEMO_KEEP=1 keeps the
# farm and the dashboard up after it until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODEL=${1:-models/effnet_lite0.onnx}
IMAGES=${2:-tests/fixtures/imagenet-100}
shift $(( $# > 2 ? 2 : $# ))
OUT=demo-out/farm
mkdir -p "$OUT"
rm -f "$OUT/port" "$OUT/http-port"
pids=()
cleanup() {  # agents first (they hand their jobs back), then the coordinator
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

"$PY" -m coordinator.cli serve --port 0 --port-file "$OUT/port" --data-dir "$OUT/coordinator" \
  --http-port 0 --http-port-file "$OUT/http-port" >"$OUT/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do [ -s "$OUT/port" ] && break; sleep 0.2; done
[ -s "$OUT/port" ] || { echo "coordinator did not start; see $OUT/coordinator.log" >&2; exit 1; }
ADDR=127.0.0.1:$(cat "$OUT/port")
DASHBOARD=http://127.0.0.1:$(cat "$OUT/http-port")/
echo "coordinator on $ADDR; watch the campaign at $DASHBOARD"
for i in 1 2; do
  "$PY" -m agent.cli register --device cpu-x86 --coordinator "$ADDR" --threads 1 \
    --work-dir "$OUT/agent$i" >"$OUT/agent$i.log" 2>&1 &
  pids+=($!)
done
"$PY" -m coordinator.cli tune "$MODEL" --images "$IMAGES" --out "$OUT/report" \
  --coordinator "$ADDR" --devices cpu-x86 "$@"
"$PY" -m coordinator.cli status --coordinator "$ADDR"
echo "report page: $(pwd)/$OUT/report/report.html"
if [ "${QFARM_DEMO_KEEP:-0}" = 1 ]; then
  echo "dashboard: $DASHBOARD (the farm stays up until Ctrl-C)"
  wait "${pids[0]}"
else
  echo "dashboard: $DASHBOARD (live while the farm ran; QFARM_DEMO_KEEP=1 keeps it up)"
fi
