#!/usr/bin/env bash
# Export a finished run and write every report of it, each from the exported file as it will be served:
# its own split's test part (with the served decisions: uncertain by reason, domain check), the training log and
# curves, the shortcut audit, and the images outside the training data.
#   scripts/report_model.sh RUN_DIR ONNX_OUT REPORT_DIR [--metrics OTHER_METRICS.json ...]
#   e.g. scripts/report_model.sh runs/cells-w0.25 runs/lite0-blocked.onnx reports/lite0/blocked
# With INT8=1 the float graph goes to ONNX_OUT's -float sibling (its reference) and ONNX_OUT is its int8 version
# (`leukostage quantize`: calibrated on the training part, thresholds chosen again on the validation part).
set -euo pipefail
run=$1 onnx=$2 out=$3
shift 3
data=${LEUKOSTAGE_DATA:-../shared/data}
name=$(basename "${onnx%.onnx}")
mkdir -p "$out"
if [[ ${INT8:-0} == 1 ]]; then
  float=${onnx%.onnx}-float.onnx
  .venv/bin/leukostage export --checkpoint "$run/best.pt" --out "$float" --name "${NAME:-$name}-float" --data "$data"
  .venv/bin/leukostage quantize --model "$float" --out "$onnx" --name "${NAME:-$name}" --data "$data" "$@"
else
  .venv/bin/leukostage export --checkpoint "$run/best.pt" --out "$onnx" --name "${NAME:-$name}" --data "$data" "$@"
fi
.venv/bin/leukostage evaluate --model "$onnx" --data "$data" --out "$out"
cp "$run/curves.png" "$run/log.csv" "$run/run.json" "$out/"
cp "${onnx%.onnx}.card.json" "$out/card.json"
.venv/bin/leukostage audit --model "$onnx" --data "$data" --out "$out/audit"
.venv/bin/leukostage evaluate --model "$onnx" --external "$data/pbc_sample" "$data/bccd_smears" --out "$out/external" \
  > /dev/null
