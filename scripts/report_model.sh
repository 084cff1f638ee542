#!/usr/bin/env bash
# Export a finished run and write every report of it, each from the exported file as it will be served:
# its own split's test part (with the served decisions: uncertain by reason, domain check), the training log and
# curves, the shortcut audit, and the images outside the training data.
#   scripts/report_model.sh RUN_DIR ONNX_OUT REPORT_DIR [--metrics OTHER_METRICS.json ...]
#   e.g. scripts/report_model.sh runs/cells-w0.25 runs/lite0-blocked.onnx reports/lite0/blocked
set -euo pipefail
run=$1 onnx=$2 out=$3
shift 3
data=${LEUKOSTAGE_DATA:-../shared/data}
name=$(basename "${onnx%.onnx}")
mkdir -p "$out"
.venv/bin/leukostage export --checkpoint "$run/best.pt" --out "$onnx" --name "${NAME:-$name}" --data "$data" "$@"
.venv/bin/leukostage evaluate --model "$onnx" --data "$data" --out "$out"
cp "$run/curves.png" "$run/log.csv" "$run/run.json" "$out/"
cp "${onnx%.onnx}.card.json" "$out/card.json"
.venv/bin/leukostage audit --model "$onnx" --data "$data" --out "$out/audit"
.venv/bin/leukostage evaluate --model "$onnx" --external "$data/pbc_sample" "$data/bccd_smears" --out "$out/external" \
  > /dev/null
