#!/usr/bin/env bash
# Ship a run as models/NAME.onnx + card, with another run's blocked-split metrics in the card, and score it on
# images outside the training data.  Run scripts/report_run.sh on both runs first.
#   scripts/release_model.sh NAME RANDOM_RUN BLOCKED_REPORT   e.g. paper runs/paper-random reports/paper/blocked
set -euo pipefail
name=$1 random_run=$2 blocked_report=$3
data=${LEUKOSTAGE_DATA:-../shared/data}
.venv/bin/leukostage export --checkpoint "$random_run/best.pt" --out "src/leukostage/models/$name.onnx" --name "$name" \
  --data "$data" --metrics "$blocked_report/metrics.json"
.venv/bin/leukostage evaluate --model "src/leukostage/models/$name.onnx" --external "$data/pbc_sample" "$data/bccd_smears" \
  --out "reports/$name/external"
